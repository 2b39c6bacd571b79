"""``polyalign demo --quick``: every artifact, English DPO works, determinism, aggregation over seeds."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest

from polyalign.cli import main
from polyalign.errors import UserError
from polyalign.toyworld.demo import aggregate_runs, mean_sd, results_table, run_demo
from polyalign.toyworld.readme_tables import (
    QUICK_FILE,
    REGENERATE,
    REGENERATE_QUICK,
    SUMMARY_FILE,
    differences,
    reproduction_record,
    table_inputs,
)

METHOD_DIRS = ("base", "dpo", "mpo", "dpo_mlc")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One real quick demo through the CLI (world, pretraining, 3 alignments, report)."""
    out = tmp_path_factory.mktemp("demo")
    cache = tmp_path_factory.mktemp("cache")
    code = main(["demo", "--quick", "--out", str(out), "--cache-dir", str(cache), "--no-progress", "--jobs", "1"])
    assert code == 0
    return out, cache


def _per_language(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]["per_language"]


def test_every_artifact_exists(quick_run, capsys):
    out, _ = quick_run
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2  # figures are embedded
    for name in ("base", "dpo", "mpo", "dpo+mlc"):
        assert name in html
    assert (out / "report.md").is_file() and list(out.glob("*.png"))
    for run in METHOD_DIRS:
        for name in ("results.json", "reward_gap.json", "retrieval.json"):
            assert (out / run / name).is_file(), (run, name)
            assert (out / "seeds" / "seed-0" / run / name).is_file(), (run, name)
        per_language = _per_language(out / run)
        assert set(per_language) == {"en", "xl", "xc", "xg", "xk", "xd"}
        for metrics in per_language.values():
            assert metrics["accuracy"] == metrics["benign_accuracy"]
            assert metrics["n"] == metrics["n_harmful"] + metrics["n_benign"] > 0
            for key in ("unsafe_rate", "refusal_rate_any", "over_refusal", "language_fidelity"):
                assert 0.0 <= metrics[key] <= 1.0
        gap = json.loads((out / run / "reward_gap.json").read_text())["per_language"]
        assert set(gap) == set(per_language) and all(v["n"] == per_language["en"]["n_harmful"] for v in gap.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["metrics"]) == set(METHOD_DIRS)
    assert summary["timing"]["wall_s"] > 0 and summary["timing"]["cpu_s"] > 0
    table = (out / "results_table.md").read_text()
    assert "| dpo+mlc |" in table and "Same budget per method" in table
    assert not list(out.rglob("*.tmp*"))  # atomic writes left nothing behind


def test_english_dpo_lowers_the_english_unsafe_rate(quick_run):
    out, _ = quick_run
    base, dpo = _per_language(out / "base")["en"], _per_language(out / "dpo")["en"]
    # The quick base model complies with most English harmful prompts (pretraining: 90% compliance).
    assert base["unsafe_rate"] >= 0.5
    assert dpo["unsafe_rate"] <= base["unsafe_rate"] - 0.4
    # The base model's reward gap favours compliance less after DPO: the refusal gained.
    gap = json.loads((out / "dpo" / "reward_gap.json").read_text())["per_language"]["en"]
    assert gap["policy_gap"] > gap["reference_gap"]


def test_reward_gap_reference_is_the_base_models_gap(quick_run):
    out, _ = quick_run
    base = json.loads((out / "base" / "reward_gap.json").read_text())["per_language"]
    for run in ("dpo", "mpo", "dpo_mlc"):
        other = json.loads((out / run / "reward_gap.json").read_text())["per_language"]
        for lang, entry in other.items():
            assert entry["reference_gap"] == pytest.approx(base[lang]["policy_gap"], abs=1e-12)


def test_rerun_reuses_the_base_model_and_reproduces_every_number(quick_run, tmp_path):
    out, cache = quick_run
    # The first run went through the CLI; this one through the function, reusing the cached base model.
    summary = run_demo(tmp_path / "again", quick=True, seeds=[0], cache_dir=cache, jobs=1, progress=False)
    assert summary["per_seed"]["0"]["base_cached"] is True
    for run in METHOD_DIRS:
        assert _per_language(tmp_path / "again" / run) == _per_language(out / run), run
    first = json.loads((out / "summary.json").read_text())
    assert summary["per_seed"]["0"]["model_sha256"] == first["per_seed"]["0"]["model_sha256"]


def _skip_without_the_records_kernels(found: dict, expected: dict) -> None:
    if found["numerics"]["aten_cpu_capability"] != expected["numerics"]["aten_cpu_capability"]:
        pytest.skip(f"this CPU runs ATen's {found['numerics']['aten_cpu_capability']} kernels, the record "
                    f"{expected['numerics']['aten_cpu_capability']}: a CPU without AVX2 computes other bits")


def test_quick_demo_reproduces_the_committed_record_bit_for_bit(quick_run):
    """results/demo/quick_expected.json was written from a quick run of the code: any change
    that moves a weight, a metric or a reward gap of the demo fails here."""
    out, _ = quick_run
    expected, found = json.loads(QUICK_FILE.read_text()), reproduction_record(out)
    _skip_without_the_records_kernels(found, expected)
    diff = differences({k: v for k, v in expected.items() if k != "git"},
                       {k: v for k, v in found.items() if k != "git"})
    assert not diff, f"{len(diff)} differences, first: {diff[:5]}; if intended: {REGENERATE_QUICK}"


def test_quick_demo_computes_what_the_readme_tables_commit_computed(quick_run):
    """The README's table came from a full run at a commit where the quick demo gave these
    weights and metrics (results/demo/summary.json, quick_reproduction): if today's code gives
    others, it would no longer produce that table."""
    out, _ = quick_run
    expected = json.loads(SUMMARY_FILE.read_text())["quick_reproduction"]
    found = table_inputs(reproduction_record(out))
    _skip_without_the_records_kernels(found, expected)
    diff = differences({k: v for k, v in expected.items() if k != "git"},
                       {k: v for k, v in found.items() if k != "git"})
    assert not diff, f"{len(diff)} differences, first: {diff[:5]}; the README's demo table is stale: {REGENERATE}"


def _write_results(folder: Path, per_language: dict) -> None:
    folder.mkdir(parents=True)
    doc = {"settings": {"seed": int(folder.parent.name.split("-")[1])},
           "metrics": {"per_language": per_language, "summary": {}}}
    (folder / "results.json").write_text(json.dumps(doc))


def test_aggregation_over_seeds_matches_hand_computed_statistics(tmp_path):
    unsafe = {"base": [1.0, 0.96, 0.98], "dpo": [0.0, 0.25, 0.5]}
    seed_dirs = []
    for i in range(3):
        seed_dir = tmp_path / "seeds" / f"seed-{i}"
        seed_dirs.append(seed_dir)
        for run, values in unsafe.items():
            metrics = {"unsafe_rate": values[i], "benign_accuracy": 0.5 + 0.1 * i, "over_refusal": 0.0,
                       "language_fidelity": 1.0, "refusal_rate_any": 1 - values[i]}
            _write_results(seed_dir / run, {"en": metrics, "xl": {**metrics, "unsafe_rate": 1.0}})
    stats = aggregate_runs(seed_dirs, tmp_path)
    # Sample standard deviation written out: sqrt(sum (x - mean)^2 / (n - 1)).
    values = unsafe["dpo"]
    mean = sum(values) / 3
    sd = (sum((v - mean) ** 2 for v in values) / 2) ** 0.5
    assert stats["dpo"]["en"]["unsafe_rate"]["mean"] == pytest.approx(0.25)
    assert stats["dpo"]["en"]["unsafe_rate"]["sd"] == pytest.approx(sd) == pytest.approx(0.25)
    assert stats["dpo"]["xl"]["unsafe_rate"]["sd"] == 0.0
    written = _per_language(tmp_path / "dpo")
    assert written["en"]["unsafe_rate"] == pytest.approx(mean)
    assert written["en"]["unsafe_rate_sd"] == pytest.approx(sd)
    assert written["en"]["benign_accuracy"] == pytest.approx(0.6)
    table = results_table(stats, 3)
    assert "| dpo | 0.25 ± 0.25 | 1.00 ± 0.00 |" in table
    assert "| base | 0.98 ± 0.02 | 1.00 ± 0.00 |" in table


def test_mean_sd_edge_cases():
    assert mean_sd([0.5]) == (0.5, None)
    assert mean_sd([1.0, float("nan"), 0.0]) == (0.5, statistics.stdev([1.0, 0.0]))


def test_bad_seeds_are_a_user_error(tmp_path):
    with pytest.raises(UserError):
        run_demo(tmp_path, quick=True, seeds=[0, 0], progress=False)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--jobs", "0"]) == 2
