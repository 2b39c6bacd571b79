"""Helpers shared by the training tests (imported by name: pytest puts this folder on sys.path)."""

from __future__ import annotations

from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
TINY_RECIPE = REPO / "recipes" / "tiny_cpu_mpo.yaml"

def base_settings(tiny_ckpt: Path, train_file: Path, out: Path, **extra) -> dict:
    """Overrides turning the tiny MPO recipe into a fast preference run."""
    settings = {
        "model_name_or_path": str(tiny_ckpt), "train_file": str(train_file), "output_dir": str(out),
        "reference_cache_dir": str(out.parent / "refcache"), "method": "dpo", "detect_language": False,
        "max_examples": None, "max_steps": 3, "per_device_train_batch_size": 8, "logging_steps": 1,
        "learning_rate": 1e-3,
    }
    settings.update(extra)
    return settings


def brute_logps(model, examples, side: str) -> tuple[list[float], list[float]]:
    """Summed and mean response log-probs from full logits in float64, one example at a time."""
    sums, avgs = [], []
    for e in examples:
        prompt, resp = e["prompt_input_ids"], e[f"{side}_input_ids"]
        ids = torch.tensor([prompt + resp])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
        tok = [logp[len(prompt) + i - 1, t].item() for i, t in enumerate(resp)]
        sums.append(sum(tok))
        avgs.append(sum(tok) / len(tok))
    return sums, avgs
