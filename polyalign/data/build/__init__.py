"""Build multilingual alignment data from English preference pairs (``polyalign data build``).

Translate (:mod:`.translate`, cached by :mod:`.cache`), self-generate with the model being
aligned (:mod:`.selfgen`), judge and pair (:mod:`.pairing`), filter (:mod:`.filters`,
:mod:`.similarity`), and emit MPO parallel pairs, MLC prompt variants or per-language DPO
pairs with a data card (:mod:`.pipeline`, :mod:`.card`), configured by YAML
(:mod:`.config`). Names are imported lazily: ``import polyalign.data.build`` loads no torch.
"""

from __future__ import annotations

from polyalign._lazy import lazy_exports

_EXPORTS = {
    "BuildConfig": "polyalign.data.build.config",
    "load_build_config": "polyalign.data.build.config",
    "BuildPipeline": "polyalign.data.build.pipeline",
    "run_build": "polyalign.data.build.pipeline",
    "Translation": "polyalign.data.build.translation",
    "Translator": "polyalign.data.build.translation",
    "HFSeq2SeqTranslator": "polyalign.data.build.translate_hf",
    "OpenAITranslator": "polyalign.data.build.translate_openai",
    "build_translator": "polyalign.data.build.translate",
    "language_token": "polyalign.data.build.translate_hf",
    "TranslationCache": "polyalign.data.build.cache",
    "SelfGenerator": "polyalign.data.build.selfgen",
    "judge_generations": "polyalign.data.build.selfgen",
    "FilterConfig": "polyalign.data.build.filters",
    "FilterReport": "polyalign.data.build.filters",
    "TextItem": "polyalign.data.build.filters",
    "text_reasons": "polyalign.data.build.filters",
    "pair_reasons": "polyalign.data.build.filters",
    "EmbeddingSimilarity": "polyalign.data.build.similarity",
    "load_similarity": "polyalign.data.build.similarity",
    "mpo_pairs": "polyalign.data.build.pairing",
    "mlc_pairs": "polyalign.data.build.pairing",
    "dpo_pairs": "polyalign.data.build.pairing",
    "response_pair": "polyalign.data.build.pairing",
}

__all__, __getattr__ = lazy_exports(__name__, _EXPORTS)
