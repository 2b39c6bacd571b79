"""Fingerprints of what an evaluation ran on: the model (and adapter) and the data.

Each fingerprint has an ``identity`` part (what decides the outputs; it goes into the
store fingerprint, so it must not contain paths: moving a folder must not invalidate a
store) and descriptive parts (paths, sizes) that only go into ``results.json``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from polyalign.errors import UserError
from polyalign.http_client import redact as redact_text
from polyalign.io import content_sha256, file_fingerprint, text_fingerprint

# In-memory models up to this many parameters are hashed tensor by tensor; a bigger one
# (copying it off the accelerator would take minutes) gets a weak identity: its store is
# never reused.
HASH_PARAMS_UP_TO = 200_000_000
SECRET_WORDS = ("key", "token", "secret", "password", "auth")
WEAK = "weak"  # identity["strength"] when the weights' content is not known


def folder_identity(folder: Path) -> dict[str, Any]:
    """Content hash of every file directly in a model folder (weights, config, tokenizer).

    Each file's sha256 comes from :func:`polyalign.io.content_sha256` (cached by inode,
    size and mtime_ns), so a multi-gigabyte checkpoint is read once, and two fine-tunes of
    one base with identical shard sizes never share an identity.
    """
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return {"files": {p.name: content_sha256(p) for p in files}, "strength": "content"}


def _hub_snapshot(repo_id: str) -> Path | None:
    """The cached snapshot folder of a hub id (None when it is not in the local cache)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means: not resolvable offline
        return None


def source_identity(source: str | Path) -> dict[str, Any]:
    """Identity of a model named by a folder or a cached hub id, without loading it (vLLM).

    A hub id is resolved to its cached snapshot and hashed like a folder; one that cannot
    be resolved gets a weak identity (``strength: weak`` with the reason).
    """
    local = Path(source)
    if not local.is_dir():
        try:  # a known model name (polyalign models get NAME) stands for its converted folder
            from polyalign.models import resolve_model_source

            local = Path(resolve_model_source(source))
        except (ImportError, UserError):
            pass
    if local.is_dir():
        return folder_identity(local)
    snapshot = _hub_snapshot(str(source))
    if snapshot is not None and snapshot.is_dir():
        return {"hub_id": str(source), **folder_identity(snapshot)}
    return {"hub_id": str(source), "strength": WEAK,
            "weak_reason": f"{source} is neither a folder nor a hub id in the local cache, "
                           "so its weights cannot be hashed"}


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


def weak_reason(identity: dict[str, Any]) -> str | None:
    """Why ``identity`` cannot tell two models apart (None when it is a content hash)."""
    return identity.get("weak_reason", "the model's identity is weak") if identity.get("strength") == WEAK else None


def model_fingerprint(model: Any, source: str | Path | None, adapter: str | Path | None = None) -> dict[str, Any]:
    """``{"source", "adapter", "class", "num_parameters", "dtype", "identity": {...}}``.

    ``identity`` is the content hash of the model folder's files (:func:`source_identity`;
    a hub id through its cached snapshot), otherwise the hash of the in-memory parameters.
    Above 200 M in-memory parameters it is weak (``strength: weak``): a store written then
    is never reused (:func:`weak_reason`).
    """
    config = getattr(model, "config", None)
    config_dict = config.to_dict() if config is not None and hasattr(config, "to_dict") else {}
    for volatile in ("_name_or_path", "transformers_version", "name_or_path"):
        config_dict.pop(volatile, None)
    identity: dict[str, Any] = {"config_sha": text_fingerprint(config_dict)}
    if source is not None:
        identity.update(source_identity(source))
    else:
        sha = _params_sha(model)
        identity["params_sha256"] = sha
        identity["strength"] = "content" if sha is not None else WEAK
        if sha is None:
            identity["weak_reason"] = (f"an in-memory model over {HASH_PARAMS_UP_TO:,} parameters is not hashed "
                                       "(pass its folder instead)")
    if adapter is not None:
        identity["adapter"] = adapter_identity(adapter)
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


def adapter_identity(adapter: str | Path) -> str:
    """``sha256:<hex>`` over every file of an adapter folder (relative names and content
    hashes, each cached like the weights'), or of one adapter file."""
    path = Path(adapter)
    files = ([p for p in sorted(path.rglob("*")) if p.is_file() and not p.name.startswith(".")]
             if path.is_dir() else [path])
    listing = [(str(p.relative_to(path)) if path.is_dir() else p.name, content_sha256(p)) for p in files]
    return "sha256:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


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


def redact(options: Any) -> Any:
    """``options`` with secret-looking values replaced by ``"***"``, recursively: values under
    keys naming a key, token, secret, password or auth, and in every string a URL's secret
    query values (``key=``, ``api-key=``, ``token=``...) and ``user:password@``."""
    if isinstance(options, dict):
        return {k: ("***" if any(w in str(k).lower() for w in SECRET_WORDS) and not str(k).lower().endswith("_env")
                    else redact(v)) for k, v in options.items()}
    if isinstance(options, (list, tuple)):
        return [redact(v) for v in options]
    return redact_text(options) if isinstance(options, str) else options
