"""Local ``transformers`` seq2seq translation models: NLLB-200, M2M100, Marian.

Seq2seq input layout (built here from token ids, so it does not depend on the tokenizer
class; it is what the families' own tokenizers produce):

=========  ===========================================  ===============================
family     encoder input                                decoder
=========  ===========================================  ===============================
nllb       ``[src_code] text </s>`` (legacy tokenizers:  ``</s>`` then forced BOS
           ``text </s> [src_code]``)                    ``tgt_code`` (e.g. ``zho_Hans``)
m2m100     ``[__src__] text </s>``                      ``</s>`` then forced ``__tgt__``
marian     ``text </s>`` (one model per language pair)  decoder start only, no code
=========  ===========================================  ===============================

Output ids are cut at the first ``</s>``; an output that reached ``max_new_tokens``
without it, or whose input was cut at ``max_source_tokens``, is marked ``truncated``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from polyalign.data.build.translation import Translation, Translator
from polyalign.data.languages import M2M100_LANGUAGES, NLLB_CODES, canonical_language
from polyalign.errors import UserError
from polyalign.io import file_fingerprint

FAMILIES = ("nllb", "m2m100", "marian")


def language_token(family: str, language: str, overrides: dict[str, str] | None = None) -> str | None:
    """The language-code token a family uses for a canonical ``language`` (None for Marian).

    ``overrides`` (canonical code -> token) wins; an unmapped language is a UserError.
    """
    language = canonical_language(language)
    if overrides and language in overrides:
        return overrides[language]
    if family == "marian":
        return None
    if family == "nllb":
        if language not in NLLB_CODES:
            raise UserError(f"no NLLB code known for language {language!r}; add it under translator.language_codes",
                            field="translator.language_codes")
        return NLLB_CODES[language]
    if family == "m2m100":
        base = language.split("-")[0]
        if base not in M2M100_LANGUAGES:
            raise UserError(f"M2M100 does not cover language {language!r}; add a code under translator.language_codes",
                            field="translator.language_codes")
        return f"__{base}__"
    raise UserError(f"unknown translator family {family!r}; use one of {', '.join(FAMILIES)}",
                    field="translator.family")


def model_identity(path: str) -> dict[str, Any]:
    """Cheap identity of a model: file names + sizes and the config hash (local folder), or
    the hub id. Hashing every weight byte of a 2.4 GB NLLB on each run would cost more than
    the translations it protects."""
    folder = Path(path)
    if not folder.is_dir():
        return {"hub_id": path}
    files = sorted(p for p in folder.iterdir() if p.is_file())
    identity: dict[str, Any] = {"files": {p.name: p.stat().st_size for p in files}}
    if (folder / "config.json").exists():
        identity["config_sha"] = file_fingerprint(folder / "config.json")
    return identity


class HFSeq2SeqTranslator(Translator):
    """A local ``transformers`` seq2seq translation model (NLLB-200, M2M100, Marian).

    ``model_path``: a model folder (or cached hub id). For Marian, one model per language
    pair: ``model_path`` may contain ``{src}`` / ``{tgt}`` placeholders (canonical codes,
    e.g. ``/models/opus-mt-{src}-{tgt}``) and ``pair_models`` maps ``"en-zh"`` to a path
    explicitly. Models are loaded lazily (per pair for Marian) with safetensors only and
    ``trust_remote_code=False``. Greedy (or beam) decoding, no sampling: translations are
    deterministic, which the cache relies on.
    """

    name = "hf_seq2seq"

    def __init__(
        self,
        model_path: str | Path,
        family: str = "nllb",
        *,
        batch_size: int = 8,
        max_new_tokens: int = 256,
        max_source_tokens: int = 512,
        num_beams: int = 1,
        language_codes: dict[str, str] | None = None,
        pair_models: dict[str, str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
    ) -> None:
        if family not in FAMILIES:
            raise UserError(f"unknown translator family {family!r}; use one of {', '.join(FAMILIES)}",
                            field="translator.family")
        if batch_size < 1 or max_new_tokens < 1 or max_source_tokens < 4 or num_beams < 1:
            raise UserError("batch_size, max_new_tokens, num_beams must be >= 1 and max_source_tokens >= 4",
                            field="translator")
        self.model_path = str(model_path)
        self.family = family
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_source_tokens = max_source_tokens
        self.num_beams = num_beams
        self.language_codes = {canonical_language(k): v for k, v in (language_codes or {}).items()}
        self.pair_models = dict(pair_models or {})
        self.device = device
        self.dtype = dtype
        self._loaded: dict[str, tuple[Any, Any]] = {}
        self.stats = {"generate_calls": 0, "source_truncated": 0, "output_truncated": 0, "forced_bos_missing": 0}

    def path_for(self, source: str, target: str) -> str:
        """The model folder that translates ``source`` -> ``target``."""
        pair = f"{source}-{target}"
        if pair in self.pair_models:
            return self.pair_models[pair]
        if self.family == "marian" and ("{src}" in self.model_path or "{tgt}" in self.model_path):
            return self.model_path.format(src=source, tgt=target)
        return self.model_path

    def settings(self) -> dict[str, Any]:
        model = {"template": self.model_path} if "{" in self.model_path else model_identity(self.model_path)
        return {"name": self.name, "family": self.family, "model": model,
                "pair_models": {k: model_identity(v) for k, v in sorted(self.pair_models.items())},
                "max_new_tokens": self.max_new_tokens, "max_source_tokens": self.max_source_tokens,
                "num_beams": self.num_beams, "language_codes": dict(sorted(self.language_codes.items()))}

    def load(self, path: str) -> tuple[Any, Any]:
        """The (model, tokenizer) that translates with the model folder ``path``, loaded once."""
        if path in self._loaded:
            return self._loaded[path]
        # Lazy: transformers and polyalign.models (torch) are heavy; building the OpenAI translator needs neither.
        from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

        from polyalign.models import NOT_LOCAL, pretrained_source, resolve_dtype

        try:
            where, local_only = pretrained_source(path)  # a mistyped folder is an error, never a download
        except UserError as exc:
            message = "no such translation model folder" if exc.message == "no such model folder" else exc.message
            raise UserError(message, file=path, field="translator.model") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=False, local_files_only=local_only)
            model = AutoModelForSeq2SeqLM.from_pretrained(where, dtype=resolve_dtype(self.dtype), use_safetensors=True,
                                                          trust_remote_code=False, local_files_only=local_only)
        except (OSError, ValueError) as exc:
            if local_only and not Path(where).is_dir():
                raise UserError(f"translation model: {NOT_LOCAL}", file=path, field="translator.model") from None
            raise UserError(f"cannot load translation model: {str(exc).splitlines()[0]}", file=path,
                            field="translator.model") from None
        if self.device is not None:
            model = model.to(self.device)
        self._loaded[path] = (model.eval(), tokenizer)
        return self._loaded[path]

    def _token_id(self, tokenizer: Any, token: str, path: str) -> int:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise UserError(f"the tokenizer has no language token {token!r}", file=path,
                            field="translator.language_codes")
        return int(token_id)

    def encode(self, tokenizer: Any, text: str, source: str, path: str) -> tuple[list[int], bool]:
        """Encoder ids for one text (see the module table) and whether it was cut."""
        eos = tokenizer.eos_token_id
        if eos is None:
            raise UserError("the translation tokenizer has no eos token", file=path, field="translator.model")
        body = tokenizer(text, add_special_tokens=False)["input_ids"]
        code = language_token(self.family, source, self.language_codes)
        prefix, suffix = [], [eos]
        if code is not None:
            lang_id = self._token_id(tokenizer, code, path)
            if self.family == "nllb" and getattr(tokenizer, "legacy_behaviour", False):
                suffix = [eos, lang_id]
            else:
                prefix = [lang_id]
        room = self.max_source_tokens - len(prefix) - len(suffix)
        cut = len(body) > room
        return prefix + body[:room] + suffix, cut

    def translate(self, texts: list[str], source: str, target: str) -> list[Translation]:
        import torch  # lazy, like transformers above

        source, target = canonical_language(source), canonical_language(target)
        path = self.path_for(source, target)
        model, tokenizer = self.load(path)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
        eos = tokenizer.eos_token_id
        code = language_token(self.family, target, self.language_codes)
        forced = self._token_id(tokenizer, code, path) if code is not None else None
        out: list[Translation] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = texts[start : start + self.batch_size]
            encoded = [self.encode(tokenizer, t, source, path) for t in chunk]
            width = max(len(ids) for ids, _ in encoded)
            # Right padding: the encoder is bidirectional and masked, so the side does not matter.
            input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, (ids, _) in enumerate(encoded):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                attention[row, : len(ids)] = 1
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                      "do_sample": False, "pad_token_id": pad, "eos_token_id": eos}
            if forced is not None:
                kwargs["forced_bos_token_id"] = forced
            device = next(model.parameters()).device
            with torch.inference_mode():
                generated = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                                           **kwargs)
            self.stats["generate_calls"] += 1
            for row, (_, cut) in enumerate(encoded):
                ids = generated[row, 1:].tolist()  # drop the decoder start token
                if forced is not None:
                    if ids and ids[0] == forced:
                        ids = ids[1:]
                    else:  # cannot happen with forced_bos_token_id honoured; counted, never hidden
                        self.stats["forced_bos_missing"] += 1
                stop = ids.index(eos) if eos in ids else None
                truncated = cut or stop is None
                self.stats["source_truncated"] += int(cut)
                self.stats["output_truncated"] += int(stop is None)
                kept = ids if stop is None else ids[:stop]
                kept = [i for i in kept if i != pad]
                out.append(Translation(tokenizer.decode(kept, skip_special_tokens=True).strip(), truncated=truncated))
        return out
