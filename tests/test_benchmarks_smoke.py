"""Smoke test of the benchmark suite: the quick size of every benchmark, once, in a subprocess.

Checks the JSON has its fields and the correctness checks inside the benchmarks passed (the
MPO loss equality with the official-style step, DPO losses equal to TRL's, same batch, same
generated texts). No timing is asserted: the machine is shared.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bench_quick")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(
        [sys.executable, "benchmarks/run_all.py", "--size", "quick", "--threads", "1", "--no-profile",
         "--out-dir", str(out), "--md", str(out / "RESULTS.md")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out


def _load(out: Path, name: str) -> dict:
    return json.loads((out / f"{name}.json").read_text(encoding="utf-8"))


def _check_timing(run: dict) -> None:
    for key in ("median_s", "min_s", "max_s", "iqr_s", "times_s"):
        assert key in run, key
    assert len(run["times_s"]) >= 2
    assert run["min_s"] <= run["median_s"] <= run["max_s"]
    assert run["machine"]["cores"] >= 1 and len(run["machine"]["loadavg"]) == 3


def test_dpo_json(quick_results):
    data = _load(quick_results, "dpo")
    runs = data["runs"]["fp32"]
    assert set(runs) == {"polyalign", "trl", "trl_precompute"}
    for run in runs.values():
        _check_timing(run)
        assert run["tokens_per_s"] > 0 and run["peak_rss_mb"] > 0
        assert run["same_batch_as_polyalign_collator"] is True
        assert run["tokens_per_step"] == runs["polyalign"]["tokens_per_step"]
    summary = data["summary"]["fp32"]
    assert summary["loss_equal_to_trl"] is True and summary["same_batch"] is True
    # a real comparison: the loss moves between steps (not log 2 every time)
    losses = runs["polyalign"]["losses"]
    assert losses[0] == pytest.approx(math.log(2), abs=1e-5) and abs(losses[-1] - losses[0]) > 1e-4


def test_mpo_loss_equality_passed(quick_results):
    data = _load(quick_results, "mpo")
    runs = data["runs"]["fp32"]
    assert data["summary"]["fp32"]["loss_equal"] is True
    assert set(runs) == {"polyalign", "official", "polyalign_gc", "polyalign_gc_nonreentrant", "official_gc"}
    # gradient checkpointing changes neither side's losses, in either mode
    summary = data["summary"]["fp32"]
    assert summary["loss_equal_gc_reentrant"] is True and summary["loss_equal_gc_nonreentrant"] is True
    assert summary["official_gc_loss_equal_to_no_gc"] is True
    assert [runs[i]["gradient_checkpointing"] for i in ("polyalign", "polyalign_gc", "polyalign_gc_nonreentrant")] \
        == ["off", "reentrant", "non-reentrant"]
    chosen = {"reentrant": "polyalign_gc", "nonreentrant": "polyalign_gc_nonreentrant"}[summary["gc_mode"]]
    assert summary["rss_ratio_vs_official_gc"] == pytest.approx(
        runs[chosen]["peak_rss_mb"] / runs["official_gc"]["peak_rss_mb"])
    for run in runs.values():
        _check_timing(run)
        assert run["peak_reset"] is True
    # both terms non-trivial at the first step, and equal term by term
    first_p, first_o = runs["polyalign"]["terms"][0], runs["official"]["terms"][0]
    assert first_o["retention"] > 1e-3 and first_o["mpo_gap"] > 0
    assert first_p["retention"] == pytest.approx(first_o["retention"], rel=1e-4)
    assert first_p["mpo_gap"] == pytest.approx(first_o["mpo_gap"], rel=1e-3, abs=1e-8)
    # FLOP accounting: the exact-step floor is a lower bound of what either implementation really
    # runs (counted op by op), and the official-style step (full-vocabulary logits, a reference
    # forward) runs more than polyalign's.
    p, o = runs["polyalign"], runs["official"]
    # (the official-style batch is padded to a multiple of 8 as LLaMA-Factory's collator does, so its own
    # floor counts more dominant positions; the summary uses polyalign's, the tighter one)
    assert p["exact_floor_flops"] <= o["exact_floor_flops"]
    assert p["exact_floor_flops"] > p["exact_floor_flops_shared_prompt"] > 0
    assert p["exact_floor_flops"] <= p["matmul_flops_counted"] < o["matmul_flops_counted"]
    summary = data["summary"]["fp32"]
    assert summary["flops_official_over_polyalign"] == pytest.approx(
        o["matmul_flops_counted"] / p["matmul_flops_counted"])


def test_mlc_mfu_generation_json(quick_results):
    mlc = _load(quick_results, "mlc")
    assert set(mlc["runs"]["fp32"]) == {"dpo", "dpo_mlc"}
    assert "overhead_every_step" in mlc["summary"]["fp32"]
    # the MLC term changes the loss
    assert mlc["runs"]["fp32"]["dpo_mlc"]["losses"][0] != pytest.approx(mlc["runs"]["fp32"]["dpo"]["losses"][0])
    mfu = _load(quick_results, "mfu")["runs"]["fp32"]["polyalign"]
    params = mfu["params"]
    assert mfu["model_flops_issue"] == pytest.approx(6 * params["total"] * mfu["tokens_per_step"])
    assert 0 < mfu["mfu_issue"] and mfu["matmul_peak_flops"] > 0
    # the executed-FLOPs formula agrees with the matmul FLOPs counted op by op (norm weights,
    # counted in P_body but never multiplied, are the only difference)
    assert mfu["model_flops_executed"] == pytest.approx(mfu["model_flops_counted"], rel=0.02)
    gen = _load(quick_results, "generation")
    assert gen["summary"]["fp32"]["same_outputs"] is True
    for run in gen["runs"]["fp32"].values():
        _check_timing(run)
        assert run["generated_tokens"] > 0


def test_summary_and_markdown(quick_results):
    summary = json.loads((quick_results / "summary.json").read_text(encoding="utf-8"))
    assert set(summary["targets"]["fp32"]) == {"dpo_speedup_vs_trl", "mpo_speedup_vs_official",
                                               "mpo_rss_ratio_vs_official_gc", "mfu", "generation_speedup_vs_naive"}
    for target in summary["targets"]["fp32"].values():
        assert isinstance(target["met"], bool) and target["value"] > 0
        assert target["met"] == (target["value"] <= target["target"] if target["op"] == "<="
                                 else target["value"] >= target["target"])
    text = (quick_results / "RESULTS.md").read_text(encoding="utf-8")
    assert "## Targets" in text and "## dpo" in text and summary["machine"]["torch"] in text


def test_shape_models_match_the_real_configs():
    """The real shapes are built from the checkpoints' configs: parameter counts by formula."""
    from benchmarks import common

    tok = common.build_tokenizer()
    for size, (vocab, hidden, layers, inter, q, kv, head_dim) in {
            "smollm2": (49152, 576, 30, 1536, 9, 3, 64), "gemma3": (262144, 640, 18, 2048, 4, 1, 256)}.items():
        cfg = common.SIZES[size]["config"]
        assert (cfg["vocab_size"], cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"],
                cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]) == (
                    vocab, hidden, layers, inter, q, kv, head_dim)
        # Per layer: q, k, v, o projections, a gated MLP (3 matrices), norms; tied embedding once.
        attn = hidden * head_dim * (2 * q + 2 * kv)
        norms = 2 * hidden if size == "smollm2" else 4 * hidden + 2 * head_dim  # gemma3: +2 sandwich norms, q/k norms
        expected = vocab * hidden + layers * (attn + 3 * hidden * inter + norms) + hidden
        with torch.device("meta"):
            model = common.build_shape_model(size, tok)
        params = common.count_params(model)
        assert params["tied"] is True and params["total"] == expected
        assert params["body"] == expected - vocab * hidden
    layer_types = common.SIZES["gemma3"]["config"]["layer_types"]
    assert layer_types.count("full_attention") == 3 and layer_types[5::6] == ["full_attention"] * 3


def test_readme_and_results_md_agree_with_the_json():
    """benchmarks/RESULTS.md and the README block are what benchmarks.report renders from the results JSON."""
    from benchmarks import report

    if not (REPO / "benchmarks" / "results" / "summary.json").is_file():
        pytest.skip("no benchmark results in this checkout")
    results_text, readme_text = report.rendered()
    assert (REPO / "benchmarks" / "RESULTS.md").read_text(encoding="utf-8") == results_text
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    block = readme[readme.index(report.BEGIN):readme.index(report.END)]
    assert block == readme_text[readme_text.index(report.BEGIN):readme_text.index(report.END)]
    # every shape that has results is in the README table, with its commit
    for size in report.load_all():
        assert report.SHORT[size] in block
