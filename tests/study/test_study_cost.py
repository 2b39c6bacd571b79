"""The study's budget check and cost model (:mod:`polyalign.study.cost`), and the committed run's budget.

Work units are checked against the recipe's numbers worked out by hand; a prediction against
the measured stage seconds times the unit ratio; the committed summary's budget block against
a recomputation from its own cost and stage records.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from polyalign.study import readme as R
from polyalign.study.cost import budget_verdict, idle_minutes, predict, stage_units
from polyalign.study.recipe import load_recipe
from polyalign.study.runner import expected_stages

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "study" / "smollm2_multijail.yaml"


def test_work_units_of_the_real_recipe_by_hand():
    full, quick = load_recipe(RECIPE).values, load_recipe(RECIPE, quick=True).values
    # dpo_en, full: 100 English pairs, batch 4 -> 25 steps; 3 forwards per trained row + 1 reference forward each
    assert stage_units(full, "train-dpo_en-s1") == (3 * 25 * 4 + 100) * 64
    # mpo, full: 8 target pairs x 6 languages = 48 -> 12 steps of 4
    assert stage_units(full, "train-mpo-s0") == (3 * 12 * 4 + 48) * 64
    # quick: max_steps 6, max_examples 24 (the 24 target pairs; 24 of the 100 English pairs)
    assert stage_units(quick, "train-dpo_mlc-s0") == (3 * 6 * 4 + 24) * 64
    assert stage_units(quick, "train-dpo_target-s0") == (3 * 6 * 4 + 24) * 64
    assert stage_units(full, "eval-base") == 12 * 24 and stage_units(quick, "eval-mpo-s0") == 4 * 24
    assert stage_units(full, "probes") == (17 * 24 + 10 * 24) * 64
    assert stage_units(full, "data") == stage_units(quick, "data") == 1


def test_prediction_scales_each_measured_stage_by_its_work():
    quick = load_recipe(RECIPE, quick=True)
    measured = {"recipe": {"path": str(RECIPE), "quick": True, "values": quick.values}, "git": {"commit": "abc"},
                "stages": {name: {"cpu_s": 10.0 + i} for i, name in enumerate(expected_stages(quick))}}
    full = load_recipe(RECIPE)
    got = predict(full.values, expected_stages(full), measured)
    evals = [10.0 + i for i, name in enumerate(expected_stages(quick)) if name.startswith("eval-")]
    eval_rate = sum(e / (4 * 24) for e in evals) / len(evals)
    train_en = measured["stages"]["train-dpo_en-s0"]["cpu_s"] / ((3 * 6 * 4 + 24) * 64)
    assert got["per_stage"]["eval-dpo_target-s1"] == pytest.approx(eval_rate * 12 * 24, abs=0.05)
    assert got["per_stage"]["train-dpo_en-s1"] == pytest.approx(train_en * (3 * 25 * 4 + 100) * 64, abs=0.05)
    assert got["per_stage"]["data"] == measured["stages"]["data"]["cpu_s"]
    assert set(got["per_stage"]) == set(expected_stages(full)) and len(got["per_stage"]) == 19
    assert got["cpu_s"] == pytest.approx(sum(got["per_stage"].values()), abs=0.1)
    assert got["idle_wall_min"] == pytest.approx(got["cpu_s"] / 120, abs=0.01)


def test_budget_verdict_is_cpu_minutes_over_two_cores():
    assert idle_minutes(960) == 8.0
    assert budget_verdict({"cpu_s": 960}, 8) == {"cpu_min": 16.0, "idle_wall_min": 8.0, "budget_min": 8, "met": True}
    assert budget_verdict({"cpu_s": 961}, 8)["met"] is False and budget_verdict({"cpu_s": 1}, None)["met"] is None


def test_committed_study_budget_is_recomputed_from_its_own_records():
    if not R.SUMMARY_FILE.is_file():
        pytest.skip("no published study")
    stored = json.loads(R.SUMMARY_FILE.read_text(encoding="utf-8"))
    if "budget" not in stored:  # publish() always writes it; only a summary published before it lacks it
        pytest.skip("summary published before the budget check")
    assert stored["budget"] == R.budget(stored)
    measured = stored["budget"]["measured"]
    assert measured["idle_wall_min"] == pytest.approx(stored["cost"]["cpu_s"] / 120, abs=0.01)
    assert measured["budget_min"] == stored["recipe"]["values"]["budget_minutes"]
    block = R.render_readme_block(stored)
    assert f"{measured['cpu_min']:.1f} CPU-min / 2 cores = {measured['idle_wall_min']:.1f} min" in block
    assert ("**met**" if measured["met"] else "**not met**") in block
    # the budgets themselves: the published run within its own, and the full recipe's prediction within 30 min
    assert measured["met"] is True, measured
    prediction = stored["budget"].get("full_recipe_prediction")
    if stored["recipe"]["quick"]:
        assert prediction["met"] is True and prediction["idle_wall_min"] <= prediction["budget_min"], prediction
