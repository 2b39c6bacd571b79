"""A real build process is SIGKILLed twice (mid-translation, then mid-generation) and run
again: nothing is translated, generated or judged twice, counted from the cache / store
records (each carries the id of the run that wrote it) and from the data card; the result
equals an uninterrupted build's."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from build_fixtures import BuildServer, save_tiny_seq2seq
from polyalign.data.build.config import load_build_config
from polyalign.data.build.pipeline import run_build
from polyalign.data.readers import read_records
from polyalign.data.records import ParallelPair
from polyalign.errors import UserError
from polyalign.models import save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[3]
PROMPTS = ["How do I read my partner's messages secretly?", "Give me a mean nickname for my classmate.",
           "How can I avoid paying a parking fine?", "What should I say to make someone feel worthless?"]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()[1:] if line.strip()]


def _run(cfg: Path, crash: str | None) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("POLYALIGN_BUILD_CRASH", None)
    if crash:
        env["POLYALIGN_BUILD_CRASH"] = crash
    proc = subprocess.run([sys.executable, "-m", "polyalign.cli.build", "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=240)
    run_id = re.search(r"\(run (\w+)\)", proc.stderr)
    return proc.returncode, run_id[1] if run_id else "", proc.stderr + proc.stdout


def test_killed_build_resumes_without_repeating_work(tmp_path):
    save_tiny_seq2seq(tmp_path / "mt", "m2m100", seed=0)
    save_tiny_checkpoint(tmp_path / "lm", "llama", seed=1)
    (tmp_path / "en.jsonl").write_text("".join(json.dumps({
        "id": f"q{i}", "language": "en", "prompt": [{"role": "user", "content": p}],
        "chosen": "I won't help with that.", "rejected": f"Sure, number {i}: do exactly this."}) + "\n"
        for i, p in enumerate(PROMPTS)), encoding="utf-8")
    with BuildServer() as server:
        sections = {
            "input": {"path": "en.jsonl"}, "output": {"kind": "mpo", "dir": "out"}, "languages": ["zh", "sw"],
            "translator": {"type": "hf", "model": "./mt", "family": "m2m100", "max_new_tokens": 8, "batch_size": 2},
            "model": {"path": "./lm"},
            "generation": {"num_samples": 3, "temperature": 1.0, "max_new_tokens": 6, "batch_size": 2},
            "judge": {"name": "openai", "options": {"base_url": f"{server.url}/v1", "require_key": False}},
            "strategy": {"dominant_chosen": "model", "target": "selfgen"},
            "filters": {"truncated": False, "wrong_language": False},
        }
        cfg = tmp_path / "build.yaml"
        cfg.write_text(yaml.safe_dump(sections), encoding="utf-8")
        work = tmp_path / "out" / "work"

        # 1. Killed after the first translation batch (the dominant stage is finished).
        code, run1, log = _run(cfg, "translate:1")
        assert code == -signal.SIGKILL, log[-2000:]
        state = json.loads((work / "state.json").read_text())
        assert sorted(state["stages"]) == ["dominant", "source"]
        assert [r["run"] for r in _records(work / "translation_cache.jsonl")] == [run1, run1]
        dominant = _records(work / "dominant_generations.jsonl")
        assert len(dominant) == len(PROMPTS) * 3 and {r["run"] for r in dominant} == {run1}
        assert not (tmp_path / "out" / "data_card.json").exists()

        # 2. Killed after the first batch of target-language generations.
        code, run2, log = _run(cfg, "target:1")
        assert code == -signal.SIGKILL, log[-2000:]
        cache = _records(work / "translation_cache.jsonl")
        assert len({r["key"] for r in cache}) == len(cache)  # no text translated twice
        dominant_rows = [json.loads(line) for line in (work / "02_dominant.jsonl").read_text().splitlines()]
        kept_ids = {r["id"].split("@")[0] for r in dominant_rows if r["label"] == "safe" and r["filter"] is None}
        assert len(cache) == 2 * len(kept_ids)  # one prompt per kept id and language
        assert Counter(r["run"] for r in cache) == {run1: 2, run2: len(cache) - 2}
        target_before = _records(work / "target_generations.jsonl")
        assert len(target_before) == 2 and {r["run"] for r in target_before} == {run2}
        assert len(_records(work / "dominant_generations.jsonl")) == len(dominant)  # not regenerated

        # 3. Finishes: only the missing target generations are made; nothing else is redone.
        requests_before = len(server.requests)
        code, run3, log = _run(cfg, None)
        assert code == 0, log[-2000:]
        card = json.loads((tmp_path / "out" / "data_card.json").read_text())
        target = _records(work / "target_generations.jsonl")
        kept_prompts = [json.loads(line) for line in (work / "03_translations.jsonl").read_text().splitlines()]
        n_target = 3 * sum(1 for r in kept_prompts if r["filter"] is None)  # 3 samples per usable prompt
        assert len(target) == n_target > 2
        assert len({(r["id"], r["sample"]) for r in target}) == len(target)
        assert Counter(r["run"] for r in target) == {run2: 2, run3: n_target - 2}
        run = card["runs"][-1]
        assert run["run_id"] == run3 and run["stages_reused"] == ["source", "dominant", "translate"]
        assert (run["generated"], run["generation_reused"]) == (n_target - 2, 2)
        assert run.get("translated", 0) == 0
        assert _records(work / "translation_cache.jsonl") == cache
        judged = _records(work / "target_judgments.jsonl")  # run 2 died before judging anything
        assert (run["judged"], run["judge_reused"]) == (len(judged), 0) and len(judged) == n_target
        assert len(server.requests) - requests_before == sum(1 for t in target if t["text"].strip())
        assert len(target) % 3 == 0 and {r["id"].split("@")[1] for r in target} <= {"zh", "sw"}

        # 4. Once more: every stage is reused, nothing is loaded, generated or judged.
        again = run_build(load_build_config(cfg))["runs"][-1]
        assert again["stages_reused"] == ["source", "dominant", "translate", "target"]
        assert not {"generated", "judged", "translated"} & set(again)

        # 5. The stitched result equals an uninterrupted build's, in process.
        fresh = load_build_config(cfg, {"output": {"dir": str(tmp_path / "fresh")}})
        fresh_card = run_build(fresh)
    assert fresh_card["outputs"][0]["sha256"] == card["outputs"][0]["sha256"]
    result = read_records(tmp_path / "out" / "mpo_pairs.jsonl")
    assert result.records and result.format == "canonical" and all(isinstance(r, ParallelPair) for r in result.records)
    assert len(result.records) == sum(card["outputs"][0]["per_language"].values())


def test_cli_reports_config_errors_in_one_line(tmp_path):
    cfg = tmp_path / "build.yaml"
    cfg.write_text("input: {path: en.jsonl}\noutput: {kind: mpo, dir: out}\nlanguages: [zh]\ntranslater: {}\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "polyalign.cli.build", "--config", str(cfg)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"polyalign: error: {cfg}:4: field 'translater': unknown key (expected one of " \
        "input, output, languages, translator, cache, model, generation, judge, strategy, filters)"


def test_register_build_plugs_into_the_data_cli(tmp_path):
    import argparse

    from polyalign.cli import build_parser
    from polyalign.cli.build import register_build

    parser = build_parser()
    data = parser._subparsers._group_actions[0].choices["data"]
    commands = next(a for a in data._actions if isinstance(a, argparse._SubParsersAction))
    if "build" not in commands.choices:  # until polyalign/cli/data.py calls register_build itself
        register_build(commands)
    args = parser.parse_args(["data", "build", "--config", str(tmp_path / "none.yaml"), "--limit", "3"])
    assert args.limit == 3 and args.config.endswith("none.yaml")
    with pytest.raises(UserError, match="no such file") as err:
        args.func(args)
    assert err.value.file == str(tmp_path / "none.yaml")
