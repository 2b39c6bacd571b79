"""A non-finite loss stops training, saves the weights, and names the step and the examples.

No debug setting injects the NaN: the checkpoint itself is broken. One token that occurs only
in example ``p5`` gets an infinite embedding row (saved as safetensors), so every sequence of
``p5`` turns NaN after the first RMSNorm while the other examples stay finite. With sequential
sampling and batches of 2, ``p5`` is in the third batch: the run must stop at step 3 naming
``p4`` and ``p5``, exit with code 2 and one ``polyalign: error:`` line, and leave
``nonfinite-step-3/`` with the weights (steps 1-2 applied, finite apart from the planted row)
and ``nonfinite.json``.

Under torchrun with two processes, a NaN on one rank only must stop both at the same step
(the finiteness flag is all-reduced) instead of leaving the healthy rank waiting forever in
the gradient all-reduce.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from faults_helpers import PY, cli, env, recipe, write_pairs
from polyalign.training.config import load_config
from polyalign.training.datasets import load_training_data


def _unique_token(config_path: Path, example_id: str) -> int:
    from transformers import AutoTokenizer

    config = load_config(config_path)
    tokenizer = AutoTokenizer.from_pretrained(config.model_name_or_path)
    dataset, _ = load_training_data(config, tokenizer, config.train_file, None)
    seen: dict[str, set[int]] = {}
    for e in dataset.examples:
        seen[str(e["id"])] = set(e["prompt_input_ids"]) | set(e["chosen_input_ids"]) | set(e["rejected_input_ids"])
    others = set().union(*(s for i, s in seen.items() if i != example_id))
    only = sorted(seen[example_id] - others)
    assert only, "the test data must give p5 a token of its own"
    return only[0]


def test_inf_weight_stops_training_at_the_step_with_example_ids(tmp_path):
    from polyalign.models import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", "llama")
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    config = recipe(tmp_path / "r.yaml", method="dpo", model_name_or_path=str(ckpt), train_file=str(data),
                    output_dir=str(tmp_path / "out"), reference_cache_dir=str(tmp_path / "cache"), max_steps=4,
                    per_device_train_batch_size=2, train_sampling_strategy="sequential", nll_weight=1.0)
    token = _unique_token(config, "p5")
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["model.embed_tokens.weight"][token] = float("inf")
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})

    proc = cli(["train", "--config", str(config)], cwd=tmp_path, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    # Progress bars share stderr; the error is the one line starting with the CLI's prefix.
    errors = [line for line in proc.stderr.replace("\r", "\n").splitlines() if "polyalign: error:" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    last = errors[0]
    assert last.startswith("polyalign: error:") and "non-finite loss" in last
    assert "at step 3 on examples [p4, p5]" in last and "field 'loss'" in last
    saved = tmp_path / "out" / "nonfinite-step-3"
    assert str(saved) in last
    info = json.loads((saved / "nonfinite.json").read_text())
    assert info["step"] == 3 and info["example_ids"] == ["p4", "p5"] and info["loss"] == "nan"
    assert [h["step"] for h in info["log_history"] if "loss" in h] == [1, 2]  # steps 1 and 2 were finite
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in info["log_history"] if "loss" in h)
    after = load_file(str(saved / "model.safetensors"))
    emb = after["model.embed_tokens.weight"]
    assert torch.isinf(emb[token]).all()
    rest = {k: v for k, v in after.items() if k != "model.embed_tokens.weight"}
    assert all(torch.isfinite(v).all() for v in rest.values())
    assert torch.isfinite(torch.cat([emb[:token], emb[token + 1:]])).all()
    # Two finite AdamW steps moved the weights away from the checkpoint's.
    assert max(float((after[k] - weights[k]).abs().max()) for k in rest) > 1e-4
    assert not (tmp_path / "out" / "final").exists()


@pytest.mark.slow
def test_two_processes_stop_together_when_one_rank_goes_non_finite(tmp_path):
    """Only rank 1's half of the first global batch is NaN; rank 0 must stop too, not hang."""
    from polyalign.models import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", "llama")
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    config = recipe(tmp_path / "r.yaml", method="dpo", model_name_or_path=str(ckpt), train_file=str(data),
                    output_dir=str(tmp_path / "out"), reference_cache_dir=str(tmp_path / "cache"), max_steps=2,
                    per_device_train_batch_size=2, train_sampling_strategy="sequential")
    token = _unique_token(config, "p3")
    weights = load_file(str(ckpt / "model.safetensors"))
    weights["model.embed_tokens.weight"][token] = float("inf")
    save_file(weights, str(ckpt / "model.safetensors"), metadata={"format": "pt"})
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Sequential order, 2 per rank: step 1 gives rank 0 [p0, p1] (finite) and rank 1 [p2, p3] (NaN).
    proc = subprocess.run([PY, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(port), "-m", "polyalign", "train", "--config", str(config)],
                          cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=240)
    assert proc.returncode != 0  # torchrun exits 1 when its workers exit 2
    lines = [line for line in (proc.stdout + proc.stderr).replace("\r", "\n").splitlines()
             if "polyalign: error:" in line]
    assert len(lines) == 2, proc.stderr[-3000:]  # one line per rank: both stopped at the same step
    assert all("non-finite loss (nan) at step 1 on examples [p2, p3]" in line for line in lines), lines
    info = json.loads((tmp_path / "out" / "nonfinite-step-1" / "nonfinite.json").read_text())
    assert info["step"] == 1 and info["example_ids"] == ["p2", "p3"]
