"""Everything constant about the frozen reference model, computed once and cached on disk.

Per method (all per example, in the example's chosen/rejected order):

- ``dpo``: ``ref_chosen_logps``, ``ref_rejected_logps`` (summed response log-probs) and
  ``ref_chosen_avg_logps``, ``ref_rejected_avg_logps`` (length-normalised);
- ``mpo``: on the dominant-language pair, ``ref_chosen_avg_logps`` / ``ref_rejected_avg_logps``
  (their difference is the dominant reward gap ``RG_d``) and the pooled last hidden states
  ``ref_chosen_pooled`` / ``ref_rejected_pooled`` ``[H]`` (:func:`polyalign.losses.pool_hidden`, the
  retention term's own pooling, so cache and loss share one definition);
- ``simpo``, ``orpo``, ``sft``: nothing (reference-free).

The cache file ``<cache_dir>/<key>.safetensors`` holds one tensor per quantity with rows in
the order of the example ids stored in its metadata; values are attached to the examples by
id, so shuffling and length grouping never misalign them. The key hashes the model (config
and weight files' names, sizes and mtimes, or the hub id), the model dtype, the data file
fingerprints, the tokenisation settings, the tokenised examples themselves and the method's
reference settings (pooling). A later run with the same key loads the file and never loads or
runs the reference model: :data:`REFERENCE_FORWARD_CALLS` counts reference forward batches so
tests can check that. On a miss the reference pass runs in length-sorted batches (little compute
on padding) with a progress bar on stderr, and writes each value back to its example's row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from polyalign.data.collate import collate_preference
from polyalign.errors import UserError
from polyalign.io import atomic_write_json, text_fingerprint
from polyalign.losses import pool_hidden, retention_width
from polyalign.losses.mpo import RELEASED_PAD_MULTIPLE
from polyalign.training.forward import Rows, model_sequence_logps

log = logging.getLogger("polyalign.training")

#: Number of reference-model forward batches run in this process (tests read it).
REFERENCE_FORWARD_CALLS = 0

_SCALARS = ("ref_chosen_logps", "ref_rejected_logps", "ref_chosen_avg_logps", "ref_rejected_avg_logps")
_POOLED = ("ref_chosen_pooled", "ref_rejected_pooled")


def needs_reference(method: str) -> bool:
    return method in ("dpo", "mpo")


def default_cache_dir() -> Path:
    base = os.environ.get("POLYALIGN_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "polyalign")
    return Path(base) / "reference"


def model_fingerprint(name_or_path: str) -> str:
    """Config text + weight files (name, size, mtime) of a local folder; the id itself otherwise."""
    path = Path(name_or_path)
    if not path.is_dir():
        return f"id:{name_or_path}"
    parts: list[Any] = [str(path.resolve())]
    config = path / "config.json"
    if config.is_file():
        parts.append(config.read_text(encoding="utf-8"))
    for file in sorted(path.iterdir()):
        if file.suffix in (".safetensors", ".bin") or file.name.endswith(".index.json"):
            stat = file.stat()
            parts.append([file.name, stat.st_size, stat.st_mtime_ns])
    return text_fingerprint(*parts)


def cache_key(
    model_fp: str, dtype: str | None, data_fps: list[str], settings: dict[str, Any], method: str,
    pooling: str, dataset: Any,
) -> str:
    """Stable key of everything the cached values depend on."""
    examples = [[e["id"], _token_view(e)] for e in dataset.examples]
    if pooling == "unmasked_mean":  # pooled over widths rounded up to 8 since issue 18: older caches differ
        pooling = f"{pooling}:pad{RELEASED_PAD_MULTIPLE}"
    return text_fingerprint("polyalign-reference-v1", model_fp, str(dtype), data_fps, settings, method, pooling,
                            text_fingerprint(examples))


def _token_view(example: dict[str, Any]) -> Any:
    if "dominant" in example:  # MPO: only the dominant pair goes through the reference
        example = example["dominant"]
    return [example["prompt_input_ids"], example["chosen_input_ids"], example["rejected_input_ids"]]


def _full_parameters(model: torch.nn.Module) -> Any:
    """A context in which ``model`` holds its full parameters.

    DeepSpeed ZeRO-3 (any ``deepspeed:`` setting with ``zero_optimization.stage: 3``, also via
    accelerate, whatever ``zero3_init_flag`` says: transformers then loads the model under
    ``deepspeed.zero.Init``) hands over a policy whose parameters are already partitioned
    (``ds_id``; the embedding weight has shape ``[0]``) but not yet inside the engine, so no hook
    gathers them. They are gathered for the reference pass (read-only, every rank: the memory of
    an unpartitioned model, before any optimizer state exists) and partitioned again after.
    """
    partitioned = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not partitioned:
        return contextlib.nullcontext()
    import deepspeed  # optional (ZeRO-3 runs only): imported where it is needed

    return deepspeed.zero.GatheredParameters(partitioned, modifier_rank=None)


def _pair_length(example: dict[str, Any], method: str) -> int:
    """Width of an example's reference rows: prompt + the longer answer (MPO: the dominant pair)."""
    side = example["dominant"] if method == "mpo" else example
    return len(side["prompt_input_ids"]) + max(len(side["chosen_input_ids"]), len(side["rejected_input_ids"]))


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices in batches of ``batch_size`` after sorting by length, longest first (ties in input
    order): neighbours in length share a batch, so little of the reference pass runs on padding."""
    if batch_size < 1:
        raise UserError(f"must be at least 1, got {batch_size}", field="per_device_eval_batch_size")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def compute_reference_values(
    model: torch.nn.Module, dataset: Any, method: str, *, pad_token_id: int, batch_size: int = 8,
    pooling: str = "masked_mean", chunk_size: int = 1024, progress: bool = True,
) -> dict[str, torch.Tensor]:
    """Run the reference (``model`` in eval mode, no grad) over ``dataset``; tensors in dataset order.

    Examples are scored in length-sorted batches (:func:`length_sorted_batches`) and each value
    is written back to its example's row, so the result is the one of any other batching (up to
    floating-point summation order): every value is per example. A progress bar on stderr shows
    up when the pass takes more than a few seconds (``progress``).
    """
    global REFERENCE_FORWARD_CALLS
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, torch.Tensor] = {}
    batches = length_sorted_batches([_pair_length(dataset[i], method) for i in range(len(dataset))], batch_size)
    bar = tqdm(total=len(dataset), desc="reference values", unit="example", file=sys.stderr, delay=3.0,
               disable=not progress, dynamic_ncols=True)
    try:
        with _full_parameters(model), bar:  # DeepSpeed ZeRO-3: see _full_parameters
            for index in batches:
                examples = [dataset[i] for i in index]
                if method == "mpo":
                    examples = [e["dominant"] for e in examples]
                rows = Rows.of(collate_preference(examples, pad_token_id)).to(device)
                if method == "mpo":  # the positions the retention term pools must be there
                    rows = rows.padded(retention_width(rows.attention_mask, pooling), pad_token_id)
                n = len(examples)
                total, avg, _, hidden, _ = model_sequence_logps(model, rows.input_ids, rows.attention_mask,
                                                                rows.response_mask, chunk_size=chunk_size)
                REFERENCE_FORWARD_CALLS += 1
                values = {"ref_chosen_logps": total[:n], "ref_rejected_logps": total[n:],
                          "ref_chosen_avg_logps": avg[:n], "ref_rejected_avg_logps": avg[n:]}
                if method == "mpo":
                    pooled = pool_hidden(hidden, rows.attention_mask, pooling)
                    values.update(ref_chosen_pooled=pooled[:n], ref_rejected_pooled=pooled[n:])
                for k, v in values.items():  # back to the examples' own rows
                    column = out.setdefault(k, torch.empty((len(dataset), *v.shape[1:]), dtype=torch.float32))
                    column[index] = v.detach().float().cpu()
                bar.update(n)
    finally:
        model.train(was_training)
    return out


def save_values(path: Path, ids: list[str], values: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
    """Write the cache file atomically (temp name, then rename) plus a JSON description."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in values.items()}, str(tmp), metadata={"ids": json.dumps(ids)})
        os.replace(tmp, path)
    except (OSError, SafetensorError) as exc:  # read-only or full disk: one clear line, no half-written file
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = getattr(exc, "strerror", None) or str(exc).split("I/O error: ")[-1]
        raise UserError(f"cannot write the reference cache: {reason}", file=path,
                        field="reference_cache_dir") from None
    atomic_write_json(path.with_suffix(".json"), info)


def load_values(path: Path) -> tuple[list[str], dict[str, torch.Tensor]] | None:
    """Read a cache file; None when it is missing or unreadable (then it is recomputed)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as handle:
            ids = json.loads(handle.metadata()["ids"])
            values = {k: handle.get_tensor(k) for k in handle.keys()}
    except Exception as exc:  # a corrupt cache is recomputed, not fatal
        log.warning("ignoring unreadable reference cache %s: %s", path, exc)
        return None
    return ids, values


def attach_values(dataset: Any, ids: list[str], values: dict[str, torch.Tensor], method: str) -> None:
    """Store each example's cached values in the example (the dominant side for MPO)."""
    row = {i: n for n, i in enumerate(ids)}
    missing = [i for i in dataset.ids if i not in row]
    if missing:
        raise RuntimeError(f"reference cache lacks examples {missing[:5]}")
    for example in dataset.examples:
        target = example["dominant"] if method == "mpo" else example
        r = row[str(example["id"])]
        for k, v in values.items():
            target[k] = v[r].item() if v.dim() == 1 else v[r].clone()


def prepare_reference(
    dataset: Any, method: str, key: str, cache_dir: str | Path, reference_factory: Any, *, pad_token_id: int,
    batch_size: int, pooling: str, chunk_size: int, info: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load cached reference values for ``dataset`` or compute and cache them; attach them.

    ``reference_factory()`` is a context manager yielding the reference model; it is only
    entered on a cache miss (a hit never loads a reference model). Returns a small status
    dict ``{"path", "hit", "forward_calls"}`` for the run summary.
    """
    path = Path(cache_dir) / f"{key}.safetensors"
    before = REFERENCE_FORWARD_CALLS
    loaded = load_values(path)
    if loaded is not None and set(dataset.ids) <= set(loaded[0]):
        ids, values = loaded
        hit = True
    else:
        with reference_factory() as reference:
            values = compute_reference_values(reference, dataset, method, pad_token_id=pad_token_id,
                                              batch_size=batch_size, pooling=pooling, chunk_size=chunk_size)
        ids = dataset.ids
        save_values(path, ids, values, {"key": key, "method": method, "examples": len(ids), **(info or {})})
        hit = False
    attach_values(dataset, ids, values, method)
    log.info("reference values %s %s", "loaded from" if hit else "computed and cached in", path)
    return {"path": str(path), "hit": hit, "forward_calls": REFERENCE_FORWARD_CALLS - before}
