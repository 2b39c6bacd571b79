"""GGUF file -> plain float32 safetensors checkpoint + tokenizer + chat template.

transformers reads GGUF itself (``from_pretrained(folder, gguf_file=NAME)``, with the
``gguf`` package): it maps the tensor names, undoes llama.cpp's Q/K row permutation (Llama)
and its ``+1`` on Gemma's RMSNorm weights, dequantises to float32 and builds the config and
the fast tokenizer (special tokens, ``add_bos_token`` and the chat template from the GGUF
metadata). Such a model refuses ``save_pretrained`` ("quantized with gguf and is not
serializable"), so the weights are moved into a model built from the same config without
``quantization_config`` and that one is saved. The result loads with
:func:`polyalign.models.load_model_and_tokenizer` like any other folder.

Writes go to a temporary sibling folder that is renamed into place only when complete, with
:data:`~polyalign.real_models.registry.COMPLETE_MARKER` written last.
"""

from __future__ import annotations

import copy
import errno
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.io import atomic_write_text
from polyalign.real_models.registry import COMPLETE_MARKER

# Architectures whose GGUF -> transformers mapping the tests cover (written GGUFs compared
# with the source weights); other architectures transformers reads are converted the same way.
TESTED_ARCHITECTURES = ("llama", "gemma2", "gemma3", "qwen2")


def is_disk_full(exc: BaseException) -> bool:
    """An OSError (or a safetensors/pip error text) that says the disk or quota is full."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return "No space left on device" in str(exc) or "StorageFull" in str(exc)


def disk_full_error(where: Path) -> UserError:
    try:
        free = shutil.disk_usage(where if where.exists() else where.parent).free / 2**20
        detail = f" ({free:.0f} MiB free)"
    except OSError:
        detail = ""
    return UserError(f"disk full{detail}: free space (or set POLYALIGN_CACHE_DIR to a larger disk) and rerun; "
                     "nothing was left behind as complete", file=where)


def _gguf_available() -> None:
    try:
        import gguf  # noqa: F401
    except ImportError:
        raise UserError("reading GGUF files needs the gguf package: pip install gguf==0.19.0", field="gguf") from None


def _log(message: str) -> None:
    print(f"polyalign models: {message}", file=sys.stderr, flush=True)


def gguf_architecture(path: Path) -> str:
    """``general.architecture`` of a GGUF file (cheap: reads the header only)."""
    _gguf_available()
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path))
        field = reader.fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except (KeyError, ValueError, IndexError) as exc:
        raise UserError(f"not a readable GGUF model file: {exc}", file=path) from None


def load_gguf(path: Path) -> tuple[Any, Any]:
    """``(model, tokenizer)`` as transformers loads a GGUF file: float32, still marked GGUF."""
    _gguf_available()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True,
                                                  trust_remote_code=False)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                     local_files_only=True, trust_remote_code=False)
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        if is_disk_full(exc):
            raise
        raise UserError(f"transformers cannot convert this GGUF file: {str(exc).splitlines()[0]}", file=path) from None
    return model, tokenizer


def plain_model(gguf_model: Any) -> Any:
    """A model of the same class and config without ``quantization_config``, same weights."""
    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(gguf_model.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config._name_or_path = ""
    with torch.random.fork_rng(devices=[]):  # the random init is overwritten; leave the caller's RNG alone
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    state = gguf_model.state_dict()
    result = model.load_state_dict(state, strict=True)
    if result.missing_keys or result.unexpected_keys:  # strict=True raises first; kept for clarity
        raise RuntimeError(f"weights do not match: {result}")
    if getattr(config, "tie_word_embeddings", False):
        model.tie_weights()
    model.generation_config = copy.deepcopy(gguf_model.generation_config)
    return model.eval()


def _write_notice(folder: Path, notice: str | None, licence_files: Iterable[Path], source: dict[str, Any]) -> None:
    text = notice or "Converted from a GGUF file by polyalign (dequantised to float32, saved as safetensors)."
    lines = [text, "", f"Source GGUF: {source.get('gguf_file')} (sha256 {source.get('gguf_sha256')})"]
    atomic_write_text(folder / "NOTICE", "\n".join(lines) + "\n")
    for file in licence_files:
        shutil.copyfile(file, folder / file.name)


def _share_like_user_files(folder: Path) -> None:
    """mkdtemp makes the folder 0700 (and some writers 0600 files): give them the umask's modes."""
    mask = os.umask(0)
    os.umask(mask)
    folder.chmod(0o777 & ~mask)
    for file in folder.iterdir():
        file.chmod(0o666 & ~mask)


def _save(model: Any, tokenizer: Any, folder: Path) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    for key in ("local_files_only", "is_local", "gguf_file"):  # how it was loaded, not what it is
        tokenizer.init_kwargs.pop(key, None)
    # The GGUF reader leaves "no limit"; truncation should know the model's context length.
    tokenizer.model_max_length = int(getattr(model.config, "max_position_embeddings", 0) or 2048)
    tokenizer.save_pretrained(folder)
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str) and template and not (folder / "chat_template.jinja").is_file():
        # transformers 5 writes it already; keep it as a file a user can read and edit either way.
        atomic_write_text(folder / "chat_template.jinja", template)
    _check_tokenizer_round_trip(tokenizer, folder)


# Scripts the shared data sets use, spaces, a special token written as text: the saved
# tokenizer must split all of them exactly as the one transformers built from the GGUF.
PROBE_TEXTS = ("The capital of France is Paris.", "  two leading spaces\tand a tab\nnew line",
               "Die Hauptstadt von Deutschland ist Berlin.", "Столица России — Москва.", "日本の首都は東京です。",
               "مرحبا بالعالم", "नमस्ते दुनिया", "안녕하세요 세계", "emoji 🙂 digits 12345")


def _encodings(tokenizer: Any) -> list[list[int]]:
    texts = [*PROBE_TEXTS, " ".join(str(t) for t in tokenizer.all_special_tokens)]
    return [list(tokenizer(text).input_ids) for text in texts]


def _check_tokenizer_round_trip(tokenizer: Any, folder: Path) -> None:
    """Reload the saved tokenizer and compare; fall back to the generic class if a subclass re-derives it.

    A model-specific tokenizer class may rebuild its normaliser or pre-tokenizer on load
    (seen with a byte-level vocabulary under a Gemma header); the generic
    ``TokenizersBackend`` loads ``tokenizer.json`` exactly as written.
    """
    from transformers import AutoTokenizer

    wanted = _encodings(tokenizer)
    if _encodings(AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)) == wanted:
        return
    config_path = folder / "tokenizer_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    _log(f"the saved {config.get('tokenizer_class')} splits text differently after reloading; "
         "saving it as TokenizersBackend (tokenizer.json as written)")
    config["tokenizer_class"] = "TokenizersBackend"
    atomic_write_text(config_path, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    if _encodings(AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)) != wanted:
        raise UserError("the converted tokenizer does not reproduce the GGUF tokenizer after saving", file=folder)


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    *,
    notice: str | None = None,
    licence_files: Iterable[str | Path] = (),
    provenance: dict[str, Any] | None = None,
) -> Path:
    """Convert ``gguf_path`` into the new folder ``out_dir`` (atomically: all or nothing).

    ``out_dir`` must not exist, or be an empty folder. ``notice`` and ``licence_files`` are
    written beside the weights (``NOTICE`` and the files' own names); ``provenance`` is
    merged into the completion marker ``polyalign_model.json``.
    """
    src = Path(gguf_path)
    out = Path(out_dir)
    if not src.is_file():
        raise UserError("no such GGUF file", file=src)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError("output folder exists and is not empty; choose a new folder", file=out)
    licence_paths = [Path(p) for p in licence_files]
    for path in licence_paths:
        if not path.is_file():
            raise UserError("licence file missing from the installed package", file=path)
    architecture = gguf_architecture(src)
    _log(f"converting {src.name} ({architecture}, {src.stat().st_size / 2**20:.0f} MiB) to float32 safetensors")
    started = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        gguf_model, tokenizer = load_gguf(src)
        model = plain_model(gguf_model)
        del gguf_model
        n_params = sum(p.numel() for p in model.parameters())
        _save(model, tokenizer, tmp)
        source = {"gguf_file": src.name, "gguf_sha256": (provenance or {}).get("gguf_sha256", "not checked")}
        _write_notice(tmp, notice, licence_paths, source)
        from importlib.metadata import version

        marker = {"format": "polyalign-gguf-conversion-v1", "gguf_file": src.name, "gguf_architecture": architecture,
                  "model_type": model.config.model_type, "model_class": type(model).__name__,
                  "parameters": n_params, "dtype": "float32", "tie_word_embeddings":
                  bool(getattr(model.config, "tie_word_embeddings", False)),
                  "has_chat_template": bool(getattr(tokenizer, "chat_template", None)),
                  "transformers_version": version("transformers"), "gguf_version": version("gguf"),
                  "seconds": round(time.perf_counter() - started, 1), **(provenance or {})}
        # The marker is the last file written: a folder without it is never taken as complete.
        atomic_write_text(tmp / COMPLETE_MARKER, json.dumps(marker, indent=2, sort_keys=True) + "\n")
        _share_like_user_files(tmp)
        if out.exists():
            out.rmdir()  # checked empty above
        os.replace(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, Exception) and is_disk_full(exc):
            raise disk_full_error(out) from None
        raise
    _log(f"converted in {time.perf_counter() - started:.0f} s: {n_params / 1e6:.1f} M parameters -> {out}")
    return out
