"""FSDP2 (2 CPU processes, gloo) trains like one process with the same global batch.

Two levels, both against a one-process run of the plain model on the same global batch of 8
(4 per rank), 3 AdamW steps (lr 1e-3, float32), for dpo, mpo and dpo + MLC:

- **Trainer** (``polyalign train`` under ``torchrun``, recipe ``fsdp: true`` + ``fsdp_config``
  ``version: 2``): accelerate 1.15 never selects FSDP on CPU (a CPU run given an FSDP plugin
  silently becomes ``MULTI_CPU``, i.e. DDP), so the run goes through ``fsdp2_launch.py``, a shim
  that lets accelerate select FSDP on CPU and changes nothing else. Checked: every rank reports
  ``distributed_type: FSDP``, every logged loss, the saved weights and the MLC extractor.
- **Objective** (``fsdp2_worker.py``): polyalign's data pipeline, reference values, MLC wrapper
  and :func:`compute_objective` + backward + AdamW on a model sharded by accelerate's own
  ``fsdp2_prepare_model`` (``accelerate`` layout) or by plain ``fully_shard`` calls with an
  explicit ``reshard_after_forward=True`` on the root too (``root`` layout), plus a no-grad
  evaluation mid-run and reference values computed through the sharded model.

Tolerances (as in the DDP test, tests/faults/test_faults_multiprocess.py): every loss within
1e-5, every parameter (the MLC extractor's included) within 2e-5, reference values within 1e-5.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from fsdp2_helpers import (
    FSDP_CONFIG,
    STEPS,
    max_diff,
    recipe,
    run_env,
    torchrun,
    train_fsdp2,
    train_one_process,
    weights,
    write_data,
)

pytest.importorskip("torch.distributed.fsdp", reason="needs torch.distributed (FSDP2)")

WORKER = Path(__file__).with_name("fsdp2_worker.py")
LOSS_ATOL = 1e-5
PARAM_ATOL = 2e-5
REF_ATOL = 1e-5


def _run_worker(tmp: Path, spec: dict, **env_extra: str) -> dict:
    (tmp / "spec.json").write_text(json.dumps(spec))
    proc = subprocess.run(torchrun(WORKER, str(tmp / "spec.json"), str(tmp / "out.json")), cwd=tmp,
                          capture_output=True, text=True, env=run_env(**env_extra), timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads((tmp / "out.json").read_text())


def _settings(tiny_ckpt: Path, data: dict[str, Path], tmp: Path, name: str, **extra) -> dict:
    base = {"model_name_or_path": str(tiny_ckpt), "train_file": str(data["pairs"]), "output_dir": str(tmp / name),
            "method": "dpo", "detect_language": False, "max_examples": None, "max_steps": STEPS,
            "per_device_train_batch_size": 8, "learning_rate": 1e-3, "max_length": 96, "max_prompt_length": 48}
    base.update(extra)
    return base


@pytest.fixture(scope="module")
def fsdp_results(tiny_ckpt, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp2")
    data = write_data(tmp)

    def settings(name: str, **extra) -> dict:
        return _settings(tiny_ckpt, data, tmp, name, **extra)

    mlc = {"mlc_weight": 0.8, "mlc_every": 1, "nll_weight": 0.3, "variants_file": str(data["variants"])}
    spec = {
        "cases": [
            {"name": "dpo", "global_batch": 8, "settings": settings("dpo")},
            {"name": "mpo", "global_batch": 8,
             "settings": settings("mpo", method="mpo", train_file=str(data["parallel"]), retain_alpha=1.0,
                                  mpo_beta=1.0)},
            {"name": "dpo_mlc", "global_batch": 8, "settings": settings("dpo_mlc", **mlc)},
            {"name": "dpo_root", "layout": "root", "global_batch": 8, "settings": settings("dpo_root")},
            {"name": "dpo_mlc_root", "layout": "root", "global_batch": 8, "settings": settings("dpo_mlc_root", **mlc)},
        ],
        "probe": {"settings": settings("probe")},
    }
    return _run_worker(tmp, spec)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dpo", "mpo", "dpo_mlc", "dpo_root", "dpo_mlc_root"])
def test_fsdp2_training_matches_one_process(fsdp_results, case):
    r = fsdp_results[case]
    assert len(r["single_losses"]) == len(r["fsdp_losses"]) == STEPS
    assert max(abs(a - b) for a, b in zip(r["single_losses"], r["fsdp_losses"])) <= LOSS_ATOL, r
    assert abs(r["single_eval_loss"] - r["fsdp_eval_loss"]) <= LOSS_ATOL, r  # a no-grad evaluation mid-run
    assert r["moved"] > 1e-3  # training moved the weights: the comparison is not vacuous
    assert r["max_param_diff"] <= PARAM_ATOL, r
    assert r["reference_max_diff"] <= REF_ATOL, r  # dpo and mpo both cache reference values
    if "mlc" in case:  # the extractor is in the sharded root unit and trained too
        assert r["extractor_params"] == ["mlc_extractor.linear.bias", "mlc_extractor.linear.weight"]
    prefix = "policy." if "mlc" in case else ""
    layers = [f"{prefix}model.layers.0", f"{prefix}model.layers.1"]
    if case.endswith("_root"):  # root unit = embeddings, final norm, LM head (+ extractor)
        assert r["units"] == ["", *layers]
    else:  # accelerate: embeddings alone, [final norm, LM head] as one group
        tail = [f"{prefix}lm_head", f"{prefix}model.embed_tokens", f"{prefix}model.norm"]
        assert r["units"] == sorted(["", *tail, *layers])


@pytest.mark.slow
def test_fsdp2_prefix_failure_mode_is_exercised(fsdp_results):
    """Without the fix the scorer called the decoder directly: on a sharded model that fails, because
    the root unit (embeddings, final norm, LM head) is a DTensor outside the root's forward, and a
    root forward with ``reshard_after_forward=True`` (what accelerate passes) reshards the head again
    before it could be applied."""
    probe = fsdp_results["probe"]
    assert probe["head_dtensor_before"] is True
    assert probe["decoder_direct_error"] is not None and "DTensor" in probe["decoder_direct_error"]
    assert probe["head_dtensor_after_plain_root_forward"] is True
    assert probe["head_dtensor_after_model_hidden_states"] is False
    assert probe["head_dtensor_after_reshard_after_scoring"] is True


# -- DeepSpeed ZeRO-3 (objective level; skipped without deepspeed) -----------------------------------


@pytest.mark.slow
def test_zero3_gradients_match_one_process(tiny_ckpt, tmp_path):
    """The wrapped scoring path under ZeRO-3 (DS_ACCELERATOR=cpu, gloo): every parameter is
    partitioned (persistence threshold 0), the LM head and the MLC extractor are applied after the
    engine's forward as modules, which ZeRO-3's module hooks gather. For dpo, mpo and dpo + MLC:
    the loss, a no-grad evaluation and every parameter's full gradient after one backward match one
    process (gradients within 1e-5 relative to the parameter's largest, observed ~4e-7), and the
    reference pass over a model partitioned without an engine (``zero.Init(module=...)``, as
    transformers loads it under ZeRO-3) gives the plain model's values."""
    pytest.importorskip("deepspeed", reason="needs deepspeed (pip install -e '.[deepspeed]')")
    data = write_data(tmp_path)
    mlc = {"mlc_weight": 0.8, "mlc_every": 1, "nll_weight": 0.3, "variants_file": str(data["variants"])}
    cases = {"dpo": {}, "mpo": {"method": "mpo", "train_file": str(data["parallel"])}, "dpo_mlc": mlc}
    spec = {"cases": [{"name": name, "layout": "zero3", "global_batch": 8,
                       "settings": _settings(tiny_ckpt, data, tmp_path, name, **extra)}
                      for name, extra in cases.items()]}
    results = _run_worker(tmp_path, spec, DS_ACCELERATOR="cpu")
    for name, r in results.items():
        assert r["head_partitioned"] is True, name
        assert abs(r["single_loss"] - r["zero3_loss"]) <= LOSS_ATOL, (name, r)
        assert abs(r["single_loss"] - r["zero3_eval_loss"]) <= LOSS_ATOL, (name, r)
        assert r["grad_max_rel_diff"] <= 1e-5, (name, r)
        assert r["n_params"] == (23 if "mlc" in name else 21), (name, r)
        assert r["reference_max_diff"] <= REF_ATOL, (name, r)


# -- through the Trainer (polyalign train) ------------------------------------------------------------

def _trainer_pair(tmp: Path, ckpt: Path, data: Path, **settings) -> tuple[Path, Path]:
    # eval_file: the final per-language evaluation (prediction_step, no grad) runs before the save.
    common = {"model_name_or_path": str(ckpt), "train_file": str(data), "eval_file": str(data), **settings}
    single = recipe(tmp / "single.yaml", output_dir=str(tmp / "single"), reference_cache_dir=str(tmp / "c1"),
                    per_device_train_batch_size=8, **common)
    multi = recipe(tmp / "multi.yaml", output_dir=str(tmp / "multi"), reference_cache_dir=str(tmp / "c2"),
                   per_device_train_batch_size=4, fsdp=True, fsdp_config=FSDP_CONFIG, **common)
    train_one_process(single, tmp)
    train_fsdp2(multi, tmp)
    return tmp / "single", tmp / "multi"


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dpo", "mpo", "dpo_mlc"])
def test_fsdp2_trainer_matches_one_process(tiny_ckpt, tmp_path, case):
    data = write_data(tmp_path)
    settings = {"dpo": {"method": "dpo"},
                "mpo": {"method": "mpo", "retain_alpha": 1.0, "mpo_beta": 1.0},
                "dpo_mlc": {"method": "dpo", "mlc_weight": 0.8, "mlc_every": 1, "nll_weight": 0.3,
                            "variants_file": str(data["variants"])}}[case]
    single, multi = _trainer_pair(tmp_path, tiny_ckpt, data["parallel" if case == "mpo" else "pairs"], **settings)
    ranks = [json.loads((multi / "ranks" / f"rank-{i}.json").read_text()) for i in range(2)]
    assert [r["distributed_type"] for r in ranks] == ["FSDP", "FSDP"]  # really sharded, not DDP
    assert json.loads((single / "ranks" / "rank-0.json").read_text())["distributed_type"] == "NO"
    one, two = ([h for h in json.loads((out / "final" / "run_info.json").read_text())["log_history"] if "loss" in h]
                for out in (single, multi))
    assert len(one) == len(two) == STEPS
    for key in ("loss",) + (("mlc/loss",) if "mlc" in case else ()):
        assert max(abs(a[key] - b[key]) for a, b in zip(one, two)) <= LOSS_ATOL, (key, one, two)
    # The gradient norm (~1.5, computed by FSDP2's clipping over DTensors): relative 1e-5 (observed ~3e-6).
    assert max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(one, two)) <= 1e-5
    evals = [json.loads((out / "final" / "run_info.json").read_text())["metrics"] for out in (single, multi)]
    keys = [k for k in evals[0] if k.startswith("eval_") and k.endswith("_loss")]
    assert keys and all(abs(evals[0][k] - evals[1][k]) <= LOSS_ATOL for k in keys), (keys, evals)
    w1, w2 = weights(single / "final"), weights(multi / "final")
    assert max_diff(w1, weights(tiny_ckpt)) > 1e-3  # training moved the weights: the comparison is not vacuous
    assert max_diff(w1, w2) <= PARAM_ATOL
    if "mlc" in case:
        e1, e2 = (weights(out / "final" / "mlc_extractor") for out in (single, multi))
        assert max_diff(e1, e2) <= PARAM_ATOL
