"""Resume: a real ``polyalign eval`` process is SIGKILLed midway; the rerun finishes the job
with exactly one record per (item, sample), reusing everything already generated."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from polyalign.evaluation.benchmarks import load_benchmark
from polyalign.evaluation.generation import GenerationSettings, HFGenerator, make_tasks
from polyalign.models import load_model_and_tokenizer, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
LANGS = ["en", "zh", "bn"]
LIMIT = 8  # 24 items, batches of 2 -> 12 batches


def _records(path):
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return lines[1:]


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_recomputation(shared_data, tmp_path):
    model_dir = save_tiny_checkpoint(tmp_path / "model", "qwen2", seed=6)
    out = tmp_path / "eval"
    store = out / "generations.jsonl"
    base = [sys.executable, "-m", "polyalign", "eval", "--model", str(model_dir), "--benchmark", "multijail",
            "--data", str(shared_data), "--languages", ",".join(LANGS), "--limit", str(LIMIT),
            "--max-new-tokens", "6", "--batch-size", "2", "--out", str(out), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}

    # 1. Start a slow run (0.4 s after each batch) and kill it once a few batches are stored.
    proc = subprocess.Popen([*base, "--batch-delay", "0.4"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:
        if store.exists() and len(store.read_bytes().splitlines()) >= 1 + 6:
            break
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "results.json").exists()
    before = _records(store)
    total = len(LANGS) * LIMIT
    assert 6 <= len(before) < total
    first_run = {r["run"] for r in before}
    assert len(first_run) == 1
    # Simulate the worst moment of a kill: half a record written, no newline.
    with open(store, "ab") as handle:
        handle.write(b'{"id": "999-en", "sample": 0, "text": "half a rec')

    # 2. Rerun the same command (no delay: batch pacing is not a setting).
    rerun = subprocess.run(base, env=env, capture_output=True, text=True, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "torn" in rerun.stderr
    match = re.search(r"generated (\d+) new, reused (\d+) from the store \(run (\w+)\)", rerun.stderr)
    assert match, rerun.stderr[-2000:]
    generated, reused, second_run = int(match[1]), int(match[2]), match[3]

    after = _records(store)
    keys = [(r["id"], r["sample"]) for r in after]
    assert len(keys) == len(set(keys)) == total  # exactly one record per (item, sample)
    assert Counter(r["language"] for r in after) == {lang: LIMIT for lang in LANGS}
    assert after[: len(before)] == before  # finished work untouched, in place
    assert Counter(r["run"] for r in after) == {first_run.pop(): len(before), second_run: total - len(before)}
    assert (generated, reused) == (total - len(before), len(before))
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert results["run"]["generated"] == generated and results["run"]["recovered_torn_lines"] == 1
    assert sum(m["n_total"] for m in results["metrics"]["per_language"].values()) == total

    # 3. The stitched-together outputs equal an uninterrupted, one-at-a-time generation.
    model, tok = load_model_and_tokenizer(model_dir)
    prompts = load_benchmark("multijail", data=shared_data, languages=LANGS, limit=LIMIT)
    settings = GenerationSettings(max_new_tokens=6)
    generator = HFGenerator(model, tok, settings, batch_size=1)
    expected = {task.key: generator.generate_batch([task])[0]["text"] for task in make_tasks(tok, prompts, settings)}
    assert {(r["id"], r["sample"]): r["text"] for r in after} == expected

