"""The study's budget: measured cost against ``budget_minutes``, and a per-stage cost model.

Convention (issue 17): the budget is wall minutes on 2 *idle* cores. The machine the study
is run on is shared, so its wall time says little; the check uses CPU time instead:
``CPU-minutes / 2`` is the idle-machine wall estimate (2 threads kept busy). Threads that
spin while waiting inflate CPU time under load, so the study runs with passive OpenMP waits
(:mod:`polyalign.cli.study`) and records the policy beside the cost.

The cost model predicts a recipe's CPU seconds from a finished run's stage records: each
stage of the new recipe takes the CPU seconds of the same kind of stage in the measured run
(``train-<method>`` of any seed, any ``eval-*``, ``probes``, ``data``), scaled by the ratio
of the work units below. The units count what grows with the recipe's numbers (tokens
trained, prompts x new tokens, sentences probed); fixed costs (model load and save, imports)
are scaled with them, so a prediction from a smaller run overestimates a larger one. It is a
planning figure, stated as such, not a measurement.
"""

from __future__ import annotations

import math
from typing import Any

CORES = 2  # the machine: the budget is minutes on 2 idle cores
MPO_LANGUAGE_PAIRS = {"mpo", "dpo_target"}  # methods trained on the target pairs (not the 100 English ones)
ENGLISH_PAIRS = 100  # the released MPO file's English pairs (dpo_en, dpo_mlc train on all of them)
PROBE_LANGUAGES = (17, 10)  # detox languages (retrieval), MultiJail languages (collinearity)


def idle_minutes(cpu_s: float, cores: int = CORES) -> float:
    """The idle-machine wall estimate of ``cpu_s`` CPU seconds: CPU-minutes / cores."""
    return cpu_s / 60 / cores


def budget_verdict(cost: dict[str, Any], budget_minutes: float | None) -> dict[str, Any]:
    """Measured cost vs budget: ``{"cpu_min", "idle_wall_min", "budget_min", "met"}`` (met None without budget)."""
    estimate = idle_minutes(cost["cpu_s"])
    return {"cpu_min": round(cost["cpu_s"] / 60, 2), "idle_wall_min": round(estimate, 2), "budget_min": budget_minutes,
            "met": None if budget_minutes is None else estimate <= budget_minutes}


def _kind(stage: str) -> str:
    """``train-mpo-s1`` -> ``train-mpo``; ``eval-base`` / ``eval-mpo-s0`` -> ``eval``; else the name."""
    if stage.startswith("train-"):
        return stage.rsplit("-s", 1)[0]
    return "eval" if stage.startswith("eval-") else stage


def stage_units(values: dict[str, Any], stage: str) -> float:
    """Work units of ``stage`` under recipe ``values`` (comparable between recipes, per kind of stage)."""
    kind = _kind(stage)
    data, train, ev = values["data"], values["train"], values["eval"]
    if kind == "eval":  # generation: every language's batch decodes max_new_tokens steps
        return ev["prompts_per_language"] * ev["max_new_tokens"]
    if kind == "probes":
        analysis = values["analysis"]
        return (PROBE_LANGUAGES[0] * analysis["sentences_per_language"]
                + PROBE_LANGUAGES[1] * analysis["multijail_prompts"]) * analysis["max_length"]
    if kind.startswith("train-"):
        method = kind.removeprefix("train-")
        n = (data["target_pairs_per_language"] * len(data["target_languages"]) if method in MPO_LANGUAGE_PAIRS
             else ENGLISH_PAIRS)
        n = min(n, train.get("max_examples") or n)
        batch = train["per_device_train_batch_size"] * train.get("gradient_accumulation_steps", 1)
        steps = train.get("max_steps") or math.ceil(n / batch) * train.get("num_train_epochs", 1)
        # forward + backward of each trained sequence (~3 forwards) plus one reference forward per example
        return (3 * steps * batch + n) * train["max_length"]
    return 1.0  # data: reading and writing files, independent of the model


def predict(values: dict[str, Any], stages: list[str], measured: dict[str, Any]) -> dict[str, Any]:
    """Predicted CPU seconds of ``stages`` under ``values`` from ``measured`` (a published summary).

    Returns ``{"cpu_s", "idle_wall_min", "per_stage", "from"}``; a stage whose kind the measured
    run lacks raises ``KeyError`` (nothing to scale from).
    """
    base_values = measured["recipe"]["values"]
    per_kind: dict[str, list[float]] = {}
    for name, record in measured["stages"].items():
        if record.get("cpu_s") is not None:
            per_kind.setdefault(_kind(name), []).append(record["cpu_s"] / stage_units(base_values, name))
    per_stage = {}
    for name in stages:
        rates = per_kind[_kind(name)]
        per_stage[name] = round(sum(rates) / len(rates) * stage_units(values, name), 1)  # mean over seeds / runs
    total = sum(per_stage.values())
    return {"cpu_s": round(total, 1), "idle_wall_min": round(idle_minutes(total), 2), "per_stage": per_stage,
            "from": {"recipe": measured["recipe"]["path"], "quick": measured["recipe"]["quick"],
                     "commit": (measured.get("git") or {}).get("commit")}}
