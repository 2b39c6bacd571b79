"""Two CPU processes (torchrun, gloo) train the same as one process with the same global batch.

Single process: ``per_device_train_batch_size: 8``. Two processes: 4 each (global batch 8);
DDP averages the two per-rank mean gradients, which equals the one-process mean over the
same 8 examples, and accelerate's batch sharding hands the two ranks the two halves of the
batch the single process sees. Tolerance: every parameter within 2e-5 (float32 after 3
AdamW steps at lr 1e-3; observed ~2e-6) and every logged loss within 1e-5 absolute.

DPO + MLC uses the shared MLC data (skipped without it). Each rank's report must say
``MULTI_CPU`` (accelerate really ran distributed; the single run says ``NO``).

The reference values are computed once: rank 0 under ``main_process_first`` (forward calls
> 0), rank 1 loads the cache file it wrote (0 forward calls), read from the per-rank reports
``<output_dir>/ranks/rank-<i>.json`` each process writes.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest

from faults_helpers import PY, env, load_weights, max_abs_diff, recipe, write_pairs, write_parallel

PARAM_ATOL = 2e-5
LOSS_ATOL = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(out: Path) -> list[float]:
    history = json.loads((out / "final" / "run_info.json").read_text())["log_history"]
    return [h["loss"] for h in history if "loss" in h]


def _run_pair(tmp_path: Path, ckpt: Path, data: Path, method: str, **extra) -> tuple[Path, Path]:
    single = recipe(tmp_path / "single.yaml", method=method, model_name_or_path=str(ckpt), train_file=str(data),
                    output_dir=str(tmp_path / "single"), reference_cache_dir=str(tmp_path / "cache1"),
                    per_device_train_batch_size=8, **extra)
    multi = recipe(tmp_path / "multi.yaml", method=method, model_name_or_path=str(ckpt), train_file=str(data),
                   output_dir=str(tmp_path / "multi"), reference_cache_dir=str(tmp_path / "cache2"),
                   per_device_train_batch_size=4, **extra)
    _run_recipes(tmp_path, single, multi)
    return tmp_path / "single", tmp_path / "multi"


def _run_recipes(tmp_path: Path, single: Path, multi: Path) -> None:
    # Both runs at once (they share nothing but the checkpoint folder, which they only read).
    one = subprocess.Popen([PY, "-m", "polyalign", "train", "--config", str(single)], cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    two = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                          "--master_port", str(_free_port()), "-m", "polyalign", "train", "--config", str(multi)],
                         cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=240)
    _, one_err = one.communicate(timeout=240)
    assert one.returncode == 0, one_err[-3000:]
    assert two.returncode == 0, two.stderr[-3000:]


def _check(single: Path, multi: Path, steps: int, examples: int = 16, kind: str = "MULTI_CPU") -> None:
    ranks = [json.loads((multi / "ranks" / f"rank-{i}.json").read_text()) for i in range(2)]
    assert [r["process_index"] for r in ranks] == [0, 1] and all(r["num_processes"] == 2 for r in ranks)
    assert [r["distributed_type"] for r in ranks] == [kind, kind]
    assert json.loads((single / "ranks" / "rank-0.json").read_text())["distributed_type"] == "NO"
    # 16 examples at per_device_eval_batch_size 8: two reference batches, on rank 0 only.
    assert ranks[0]["reference_forward_calls"] == -(-examples // 8)
    assert ranks[0]["reference_cache"]["train"]["hit"] is False
    assert ranks[1]["reference_forward_calls"] == 0 and ranks[1]["reference_cache"]["train"]["hit"] is True
    assert ranks[0]["reference_cache"]["train"]["path"] == ranks[1]["reference_cache"]["train"]["path"]
    assert len(list(Path(ranks[0]["reference_cache"]["train"]["path"]).parent.glob("*.safetensors"))) == 1
    one, two = _losses(single), _losses(multi)
    assert len(one) == len(two) == steps
    assert max(abs(a - b) for a, b in zip(one, two)) <= LOSS_ATOL, (one, two)
    w1, w2 = load_weights(single / "final"), load_weights(multi / "final")
    base = load_weights(single.parent / "ckpt")
    assert w1.keys() == w2.keys() == base.keys()
    assert max_abs_diff(w1, base) > 1e-3  # training moved the weights: the comparison is not vacuous
    assert max_abs_diff(w1, w2) <= PARAM_ATOL


@pytest.fixture
def ckpt(tmp_path) -> Path:
    from polyalign.models import save_tiny_checkpoint

    return save_tiny_checkpoint(tmp_path / "ckpt", "llama")


@pytest.mark.slow
def test_dpo_two_processes_match_one_process(tmp_path, ckpt):
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    single, multi = _run_pair(tmp_path, ckpt, data, "dpo", max_steps=3)
    _check(single, multi, 3)


@pytest.mark.slow
def test_mpo_two_processes_match_one_process(tmp_path, ckpt):
    data = write_parallel(tmp_path / "parallel.jsonl", 16)
    single, multi = _run_pair(tmp_path, ckpt, data, "mpo", max_steps=3, retain_alpha=1.0, mpo_beta=1.0)
    _check(single, multi, 3)


@pytest.mark.slow
@pytest.mark.shared_data
def test_dpo_with_mlc_two_processes_match_one_process(tmp_path, ckpt, shared_data):
    """DPO + the MLC term (extractor trained too): same loss, weights and extractor weights."""
    from safetensors.torch import load_file

    data = shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl"
    single, multi = _run_pair(tmp_path, ckpt, data, "dpo", max_steps=2, max_examples=16, mlc_weight=0.8,
                              mlc_every=1, nll_weight=0.3)
    _check(single, multi, 2)
    mlc = [json.loads((out / "final" / "run_info.json").read_text())["log_history"] for out in (single, multi)]
    one, two = ([h["mlc/loss"] for h in history if "mlc/loss" in h] for history in mlc)
    assert len(one) == len(two) == 2 and max(abs(a - b) for a, b in zip(one, two)) <= LOSS_ATOL
    e1, e2 = (load_file(str(out / "final" / "mlc_extractor" / "model.safetensors")) for out in (single, multi))
    assert max_abs_diff(e1, e2) <= PARAM_ATOL

