"""Report numbers against independent computations (numpy / scipy float64)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as sstats

from polyalign.report import build_report, load_runs, make_report
from polyalign.report.tables import fmt
from report_fixtures import BASE_UNSAFE, LANGS, MPO_UNSAFE, POLICY_GAP, REFERENCE_GAP, retrieval_curve


def _tables(report):
    return {table.metric: (table, delta) for table, delta in report.tables}


def _row(table, label):
    return next(r for r in table.rows if r.label == label)


def test_mean_std_rows_match_numpy(runs, tmp_path):
    base, mpo = runs
    report = make_report(load_runs([base, mpo], ["base", "MPO"]))
    tables = _tables(report)
    for metric, (table, _) in tables.items():
        for i, run in enumerate(report.runs):
            values = np.array([v for v in run.metric(metric).values() if v is not None], dtype=np.float64)
            mean, std = _row(table, "mean").values[i], _row(table, "std").values[i]
            assert mean == pytest.approx(values.mean(), abs=1e-12), metric
            assert std == pytest.approx(values.std(ddof=0), abs=1e-12), metric
            assert _row(table, "min-max").values[i] == (values.min(), values.max())
            assert _row(table, "languages").values[i] == len(values)
    # Against the hand-written numbers directly, and the formatted text in both outputs.
    unsafe = tables["unsafe_rate"][0]
    base_vals = np.array(list(BASE_UNSAFE.values()))
    assert _row(unsafe, "mean").values[0] == pytest.approx(base_vals.mean())
    assert _row(unsafe, "std").texts[0] == f"{base_vals.std():.3f}"
    # language_fidelity is null for Swahili in base: 7 defined values, the cell shows undefined.
    fidelity = tables["language_fidelity"][0]
    assert _row(fidelity, "languages").values == [7, 7]
    assert _row(fidelity, "Swahili (sw)").texts == ["—", "0.900"]
    html_path = build_report([base, mpo], tmp_path / "out", names=["base", "MPO"])
    md = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    html = html_path.read_text(encoding="utf-8")
    mpo_vals = np.array(list(MPO_UNSAFE.values()))
    assert f"| _mean_ | {base_vals.mean():.3f} | {mpo_vals.mean():.3f} |" in md
    assert f"| _std_ | {base_vals.std():.3f} | {mpo_vals.std():.3f} |" in md
    assert f"<td>{base_vals.min():.3f} – {base_vals.max():.3f}</td>" in html


def test_delta_table_matches_differences(runs):
    report = make_report(load_runs(list(runs), ["base", "MPO"]))
    delta = _tables(report)["unsafe_rate"][1]
    common = [lang for lang in LANGS if lang in MPO_UNSAFE]
    diffs = np.array([MPO_UNSAFE[lang] - BASE_UNSAFE[lang] for lang in common])
    for lang, d in zip(common, diffs):
        row = next(r for r in delta.rows if r.language == lang)
        assert row.values[0] == pytest.approx(d, abs=1e-12)
        # unsafe_rate: lower is better, so a positive delta is worse.
        assert row.marks[0] == ("worse" if d > 0 else "better")
    assert next(r for r in delta.rows if r.language == "it").texts == ["n/a"]
    assert _row(delta, "mean delta").values[0] == pytest.approx(diffs.mean(), abs=1e-12)
    # Counts get no delta table; a single run gets none at all and no warnings.
    assert _tables(report)["n"][1] is None
    single = make_report(load_runs([runs[0]]))
    assert all(d is None for _, d in single.tables) and single.warnings == []


def test_warning_only_when_dominant_gets_worse(runs):
    base, mpo = runs
    assert any("unsafe_rate" in w and "English" in w for w in make_report(load_runs([base, mpo])).warnings)
    # Make English improve as well: no warning any more.
    data = json.loads((mpo / "results.json").read_text())
    data["metrics"]["per_language"]["en"].update(unsafe_rate=0.04, safety_rate=0.96)
    (mpo / "results.json").write_text(json.dumps(data))
    assert make_report(load_runs([base, mpo])).warnings == []
    # With Chinese as the dominant language (a setting, e.g. Qwen2.5), it is listed first.
    report = make_report(load_runs([base, mpo]), dominant="zh")
    assert _tables(report)["unsafe_rate"][0].rows[0].language == "zh"


def test_pearson_in_scatter_title_matches_scipy(runs):
    report = make_report(load_runs(list(runs), ["base", "MPO"]))
    scatter = next(p for p in report.plots if p.slug == "reward_gap_vs_unsafe_rate")
    expected = sstats.pearsonr([POLICY_GAP[lang] for lang in LANGS], [MPO_UNSAFE[lang] for lang in LANGS]).statistic
    assert f"Pearson r = {expected:.3f}, 7 points" in scatter.title
    assert expected < -0.9  # the numbers were chosen that way: bigger gap, fewer unsafe answers


def test_analysis_tables(runs):
    report = make_report(load_runs(list(runs), ["base", "MPO"]))
    gap, retrieval = report.analysis
    assert gap.columns == ["MPO (reference)", "MPO"]
    for lang in LANGS:
        row = next(r for r in gap.rows if r.language == lang)
        assert row.values == [REFERENCE_GAP[lang], POLICY_GAP[lang]]
    accs = {}
    for k, lang in enumerate(LANGS[1:]):
        up, down = retrieval_curve(k)
        accs[lang] = np.mean(up + down)
        assert next(r for r in retrieval.rows if r.language == lang).values[0] == pytest.approx(accs[lang])
    assert _row(retrieval, "mean").values[0] == pytest.approx(np.mean(list(accs.values())))


def test_reads_the_analyze_command_outputs(tmp_path):
    """The files ``polyalign analyze reward-gap / retrieval --out`` write (result wrapped)."""
    from polyalign.analysis.retrieval import RetrievalResult
    from polyalign.analysis.reward_gap import RewardGapResult

    run = tmp_path / "run"
    run.mkdir()
    per_language = {"en": {"unsafe_rate": 0.1, "accuracy": 0.7}, "sw": {"unsafe_rate": 0.5, "accuracy": 0.4},
                    "bn": {"unsafe_rate": 0.4, "accuracy": 0.45}}
    (run / "results.json").write_text(json.dumps({"metrics": {"per_language": per_language}}))
    gap = RewardGapResult(ids=[], languages=[], chosen_avg_logp=[], rejected_avg_logp=[],
                          per_language={"en": {"n": 3, "mean_gap": 0.9}, "sw": {"n": 3, "mean_gap": 0.1},
                                        "bn": {"n": 3, "mean_gap": 0.3}})
    (run / "reward_gap.json").write_text(json.dumps({"analysis": "reward_gap", "result": gap.to_dict()}))
    ret = RetrievalResult(pivot="en", layers=[0, 2, 4], n_sentences=10,
                          per_layer={"sw": {"acc_pivot_to_x": [0.1, 0.5, 0.3], "acc_x_to_pivot": [0.2, 0.4, 0.3],
                                            "mean_aligned_cosine": [0.2, 0.6, 0.5]}})
    (run / "retrieval.json").write_text(json.dumps({"analysis": "retrieval", "result": ret.to_dict()}))
    report = make_report(load_runs([run]))
    loaded = report.runs[0]
    assert loaded.reward_gap["sw"] == {"policy_gap": 0.1, "reference_gap": None, "n": 3}
    assert loaded.retrieval["sw"]["layers"] == [0, 2, 4]
    assert loaded.retrieval["sw"]["acc_x_to_pivot"] == [0.2, 0.4, 0.3]
    assert loaded.retrieval_pivot == "en"
    slugs = [p.slug for p in report.plots]
    assert slugs == ["unsafe_rate_per_language", "reward_gap_per_language", "reward_gap_vs_unsafe_rate",
                     "retrieval_per_layer", "unsafe_rate_vs_accuracy"]


def test_toxicity_run_and_formatting(tmp_path):
    run = tmp_path / "rtplx"
    run.mkdir()
    per_language = {"de": {"emt": 0.31, "tox_prob": 0.2, "n_prompts": 100, "perplexity_median": 123.456},
                    "en": {"emt": 0.25, "tox_prob": None, "n_prompts": 98, "perplexity_median": 80.0}}
    (run / "results.json").write_text(json.dumps({"metrics": {"per_language": per_language}}))
    report = make_report(load_runs([run]))
    # No unsafe/safety rate: the first toxicity metric present is plotted; no utility -> no scatter.
    assert [p.slug for p in report.plots] == ["tox_prob_per_language"]
    tables = _tables(report)
    assert list(tables)[:2] == ["emt", "tox_prob"] and list(tables)[-1] == "n_prompts"
    assert _row(tables["n_prompts"][0], "German (de)").texts == ["100"]
    assert _row(tables["perplexity_median"][0], "German (de)").texts == ["123.5"]
    assert _row(tables["tox_prob"][0], "English (en) — dominant").texts == ["—"]
    assert fmt(-0.0304, "unsafe_rate", signed=True) == "-0.030"
