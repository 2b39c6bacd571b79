"""``polyalign study`` end to end on tiny offline models and self-written data.

The table writer's numbers are checked against the per-stage files and against independent
recomputations (labels counted from judgments.jsonl, trigrams counted by brute force, reward
gaps averaged from the per-pair rows); a study killed with SIGKILL mid-run resumes without
redoing finished stages and ends with the same table as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from polyalign.cli import main
from polyalign.errors import UserError
from polyalign.study.recipe import load_recipe
from tests.study.fixtures import PROMPTS, TARGETS, write_inputs

REPO = Path(__file__).resolve().parents[2]
RUNS = ["base"] + [f"{m}-s{s}" for s in (0, 1) for m in ("dpo_en", "dpo_mlc", "mpo", "dpo_target")]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    inputs = write_inputs(root)
    out = root / "out"
    assert main(["study", "--recipe", str(inputs["recipe"]), "--out", str(out)]) == 0
    return {"root": root, "out": out, **inputs}


def _json(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _rows(path: Path, *keys: str) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r for r in rows if all(k in r for k in keys)]


def test_every_stage_ran_and_wrote_its_files(study):
    out = study["out"]
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    expected = {"data", "probes"} | {f"eval-{r}" for r in RUNS} | {f"train-{r}" for r in RUNS if r != "base"}
    assert stages == expected
    for run in RUNS:
        assert (out / "eval" / run / "results.json").is_file() and (out / "eval" / run / "reward_gap.json").is_file()
    for run in RUNS[1:]:
        assert (out / "models" / run / "final" / "model.safetensors").is_file()
    # MPO and target DPO start from (and are referenced to) the same seed's English-DPO model.
    for seed in (0, 1):
        for method in ("mpo", "dpo_target"):
            info = _json(out / "models" / f"{method}-s{seed}" / "final" / "run_info.json")
            assert info["model"] == str(out / "models" / f"dpo_en-s{seed}" / "final")
    assert _json(out / "models" / "mpo-s0" / "final" / "run_info.json")["method"] == "mpo"
    assert "mlc" in _json(out / "models" / "dpo_mlc-s0" / "final" / "run_info.json")
    for name in ("retrieval.json", "retrieval.png", "collinearity.json", "collinearity.png"):
        assert (out / "probes" / name).stat().st_size > 0
    summary = _json(out / "study.json")
    cost = summary["cost"]
    assert cost["wall_s"] > 0 and cost["cpu_s"] > 0 and cost["peak_rss_mib"] > 0
    assert len(cost["stages_run"]) == len(expected)


def test_study_data_counts(study):
    data = study["out"] / "data"
    en = _rows(data / "dpo_en.jsonl", "chosen")
    assert len(en) == len(PROMPTS["en"]) and {r["language"] for r in en} == {"en"}
    target = _rows(data / "target.jsonl", "chosen")
    assert sorted(r["language"] for r in target) == sorted(list(TARGETS) * 3)
    mpo = _rows(data / "mpo.jsonl", "dominant")
    assert [r["target"]["id"] for r in mpo] == [r["id"] for r in target]
    for row in mpo:  # each target pair carries its own English pair
        i = PROMPTS[row["target"]["language"]].index(row["target"]["prompt"][0]["content"])
        assert row["dominant"]["prompt"][0]["content"] == PROMPTS["en"][i]
    mlc = _rows(data / "mlc.jsonl", "chosen")
    for row in mlc:
        i = PROMPTS["en"].index(row["prompt"][0]["content"])
        assert {lang: turns[0]["content"] for lang, turns in row["variants"].items()} == {
            lang: PROMPTS[lang][i] for lang in ("en", *TARGETS)}
    gap = _rows(data / "reward_gap.jsonl", "chosen")
    held = {(r["language"], r["prompt"][0]["content"]) for r in gap if r["language"] != "en"}
    trained = {(r["language"], r["prompt"][0]["content"]) for r in target}
    assert held and not held & trained  # target pairs for the gap are held out from training
    # MultiJail fixture = the same six prompts: every en/zh/ar prompt is an exact overlap, Italian is not trained.
    overlap = _json(data / "overlap.json")
    assert overlap["n_exact"] == 18 and set(overlap["per_language"]) == {"en", "zh", "ar"}


def _degenerate_brute(text: str, lang: str) -> bool:
    tokens = [c for c in text if not c.isspace()] if lang in ("zh", "ja", "th") else text.split()
    if len(tokens) < 12:
        return False
    grams = [tuple(tokens[i:i + 3]) for i in range(len(tokens) - 2)]
    return len(set(grams)) / len(grams) < 0.5


def test_table_matches_the_stage_files(study):
    out, summary = study["out"], _json(study["out"] / "study.json")
    for method, data in summary["methods"].items():
        runs = ["base"] if method == "base" else [f"{method}-s0", f"{method}-s1"]
        assert data["runs"] == runs
        for lang, entry in data["per_language"].items():
            unsafe, degenerate, gaps = [], [], []
            for run in runs:
                folder = out / "eval" / run
                judged = [r for r in _rows(folder / "judgments.jsonl", "label") if r["language"] == lang]
                if judged:
                    unsafe.append(sum(r["label"] == "unsafe" for r in judged) / len(judged))
                    assert _json(folder / "results.json")["metrics"]["per_language"][lang]["unsafe_rate"] == unsafe[-1]
                    gens = [g for g in _rows(folder / "generations.jsonl", "text") if g["language"] == lang]
                    degenerate.append(sum(_degenerate_brute(g["text"], lang) for g in gens) / len(gens))
                pairs = [p["gap"] for p in _json(folder / "reward_gap.json")["pairs"] if p["language"] == lang]
                if pairs:
                    gaps.append(sum(pairs) / len(pairs))
            for name, values in (("unsafe_rate", unsafe), ("degenerate_rate", degenerate), ("reward_gap", gaps)):
                stat = entry[name]
                if not values:
                    assert stat["mean"] is None
                    continue
                assert stat["mean"] == pytest.approx(statistics.fmean(values), abs=1e-12)
                if len(values) > 1:
                    assert stat["sd"] == pytest.approx(statistics.stdev(values), abs=1e-12)
            if unsafe:
                n, p = entry["n_prompts"], entry["unsafe_rate"]["mean"]
                assert n == 3 and entry["unsafe_rate"]["binomial_se"] == pytest.approx(math.sqrt(p * (1 - p) / n))
    # The markdown shows those numbers: the English-DPO reward gap in English, mean ± sd.
    gap = summary["methods"]["dpo_en"]["per_language"]["en"]["reward_gap"]
    md = (out / "study.md").read_text(encoding="utf-8")
    assert f"{gap['mean']:.2f} ± {gap['sd']:.2f}" in md and "Content warning" in md


def test_resume_after_sigkill_redoes_nothing_finished(study, tmp_path):
    inputs = write_inputs(tmp_path)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "polyalign", "study", "--recipe", str(inputs["recipe"]), "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / "stages" / "train-dpo_en-s0.json"
    deadline = time.monotonic() + 600
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    assert "train-dpo_en-s0.json" in done and "probes.json" not in done and not (out / "study.json").exists()
    # The stopped study tabulates what it finished, and says what is missing.
    assert main(["study", "--recipe", str(inputs["recipe"]), "--out", str(out), "--table-only"]) == 0
    partial = _json(out / "study.json")
    finished = {n[:-5] for n in done}
    assert "base" in partial["methods"] and set(partial["cost"]["stages_run"]) == finished
    every = {f"train-{r}" for r in RUNS[1:]} | {f"eval-{r}" for r in RUNS} | {"probes", "data"}
    assert set(partial["cost"]["stages_missing"]) == every - finished
    assert partial["cost"]["cpu_s"] == pytest.approx(sum(_json(out / "stages" / n)["cpu_s"] for n in done), abs=0.2)
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    for name, mtime in done.items():  # finished stages were not run again
        assert (out / "stages" / name).stat().st_mtime_ns == mtime
        assert f"study: {name[:-5]}: done before" in result.stderr
    resumed_cost = _json(out / "study.json")["cost"]
    # the printed cost line states the convention: CPU-minutes / 2 = the idle-machine wall estimate
    printed = re.search(r"CPU ([\d.]+) min / 2 cores = ([\d.]+) min idle-machine wall estimate, budget None min: n/a",
                        result.stderr)
    assert printed, result.stderr[-500:]
    assert float(printed[1]) == pytest.approx(resumed_cost["cpu_s"] / 60, abs=0.051)
    assert float(printed[2]) == pytest.approx(resumed_cost["cpu_s"] / 120, abs=0.051)
    resumed, whole = _json(out / "study.json"), _json(study["out"] / "study.json")
    assert sorted(resumed["cost"]["stages_skipped"]) == sorted(n[:-5] for n in done)

    def values(summary):
        return {m: {lang: {k: v["mean"] for k, v in e.items() if isinstance(v, dict)}
                    for lang, e in d["per_language"].items()}
                for m, d in summary["methods"].items()}
    assert values(resumed) == values(whole)  # same seeds, one thread: the same numbers as one uninterrupted run


def test_recipe_errors_name_file_line_and_key(tmp_path, capsys):
    inputs = write_inputs(tmp_path)
    text = inputs["recipe"].read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("  max_new_tokens:", "  max_new_token:"), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_recipe(bad)
    line = next(i for i, t in enumerate(bad.read_text().splitlines(), 1) if "max_new_token:" in t)
    assert info.value.line == line and info.value.field == "eval.max_new_token" and str(bad) in str(info.value)
    bad.write_text(text.replace("methods:\n- base\n- dpo_en\n", "methods:\n- base\n"), encoding="utf-8")
    assert main(["study", "--recipe", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert "start from dpo_en" in capsys.readouterr().err
    quick = load_recipe(inputs["recipe"], quick=True)
    assert quick["seeds"] == [0] and quick["eval"]["prompts_per_language"] == 2 and quick["eval"]["max_new_tokens"] == 8


def test_the_real_recipe_gives_a_reason_for_every_number():
    path = REPO / "recipes" / "study" / "smollm2_multijail.yaml"
    for quick in (False, True):
        recipe = load_recipe(path, quick=quick)
        assert recipe["model"] == "smollm2-135m-instruct" and len(recipe["seeds"]) == (1 if quick else 2)
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        code = line.split("#", 1)[0]
        if any(ch.isdigit() for ch in code.split(":", 1)[-1]) and ":" in code:
            assert "#" in line, f"line {number} sets a number without a reason: {line!r}"


def test_publish_writes_the_readme_block_and_the_check_catches_an_edit(study, tmp_path):
    from polyalign.study import readme as R

    page = tmp_path / "README.md"
    page.write_text(f"# x\n\n{R.BEGIN}\nold\n{R.END}\n\nrest\n", encoding="utf-8")
    summary_file = tmp_path / "results" / "summary.json"
    summary_file.parent.mkdir()
    assert R.publish(study["out"], page, summary_file) is True
    assert R.check(page, summary_file) == [] and page.read_text().endswith(f"{R.END}\n\nrest\n")
    stored = _json(summary_file)
    assert "examples" not in stored  # harmful example texts stay in the run folder
    mean = stored["methods"]["dpo_en"]["per_language"]["en"]["unsafe_rate"]["mean"]
    row = next(line for line in page.read_text().splitlines() if line.startswith("| en (en) |"))
    assert f"{mean:.2f}" in row
    page.write_text(page.read_text().replace(row, row.replace("| en (en) |", "| en (en)  |")), encoding="utf-8")
    assert R.check(page, summary_file)  # a hand edit of the block is caught


def test_readme_study_block_is_what_the_committed_summary_renders():
    from polyalign.study import readme as R

    text = (REPO / "README.md").read_text(encoding="utf-8")
    if not R.SUMMARY_FILE.is_file():
        assert f"{R.BEGIN}\n(no published study yet)\n{R.END}" in text
        return
    assert R.check() == []
