"""Fingerprints of what an evaluation ran on: the model (and adapter) and the data.

Each fingerprint has an ``identity`` part (what decides the outputs; it goes into the
store fingerprint, so it must not contain paths: moving a folder must not invalidate a
store) and descriptive parts (paths, sizes) that only go into ``results.json``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from polyalign.io import file_fingerprint, text_fingerprint

# Weights up to this size are hashed byte for byte; larger ones by file names and sizes.
HASH_WEIGHTS_UP_TO = 512 * 1024 * 1024
HASH_PARAMS_UP_TO = 200_000_000
SECRET_WORDS = ("key", "token", "secret", "password", "auth")


def _weights_identity(folder: Path) -> dict[str, Any]:
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json") and p.is_file())
    total = sum(p.stat().st_size for p in files if p.suffix == ".safetensors")
    if total <= HASH_WEIGHTS_UP_TO:
        digest = hashlib.sha256()
        for file in files:
            digest.update(file.name.encode())
            digest.update(file_fingerprint(file).encode())
        return {"files_sha256": digest.hexdigest()}
    return {"files": {p.name: p.stat().st_size for p in files}, "config_sha": file_fingerprint(folder / "config.json") if (folder / "config.json").exists() else None}


def _params_sha(model: Any) -> str | None:
    """sha256 over every parameter's name, dtype, shape and bytes (None above the size cap)."""
    params = list(model.state_dict().items())
    if sum(t.numel() for _, t in params) > HASH_PARAMS_UP_TO:
        return None
    digest = hashlib.sha256()
    for name, tensor in params:
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model: Any, source: str | Path | None, adapter: str | Path | None = None) -> dict[str, Any]:
    """``{"source", "adapter", "class", "num_parameters", "dtype", "identity": {...}}``.

    ``identity`` is the weight files' hash for a local folder (or names and sizes above
    512 MiB), otherwise the hash of the in-memory parameters (above 200 M parameters only
    the config hash: an in-memory giant cannot be told apart from its config).
    """
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    for volatile in ("_name_or_path", "transformers_version", "name_or_path"):
        config_dict.pop(volatile, None)
    identity: dict[str, Any] = {"config_sha": text_fingerprint(config_dict)}
    local = Path(source) if source is not None else None
    if local is not None and local.is_dir():
        identity.update(_weights_identity(local))
    elif local is not None and not local.exists():
        identity["hub_id"] = str(source)  # a cached hub id: its name is its identity
    else:
        identity["params_sha256"] = _params_sha(model)
    if adapter is not None:
        identity["adapter"] = file_fingerprint(adapter)
    try:
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        num = sum(p.numel() for p in model.parameters())
    except (AttributeError, StopIteration):
        dtype, num = None, None
    return {
        "source": str(source) if source is not None else "in-memory",
        "adapter": str(adapter) if adapter is not None else None,
        "class": type(model).__name__,
        "num_parameters": num,
        "dtype": dtype,
        "identity": identity,
    }


def data_fingerprint(path: Path, prompts: list[Any]) -> dict[str, Any]:
    """The data file(s) hash and the exact selection (ids hash, counts per language)."""
    per_language: dict[str, int] = {}
    for p in prompts:
        per_language[p.language] = per_language.get(p.language, 0) + 1
    return {
        "path": str(path),
        "sha256": file_fingerprint(path),
        "n_prompts": len(prompts),
        "per_language": dict(sorted(per_language.items())),
        "ids_sha": text_fingerprint(sorted(p.id for p in prompts)),
    }


def redact(options: dict[str, Any]) -> dict[str, Any]:
    """Options with secret-looking values (api keys, tokens) replaced by ``"***"``."""
    return {k: ("***" if any(w in k.lower() for w in SECRET_WORDS) else v) for k, v in options.items()}
