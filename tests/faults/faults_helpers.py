"""Helpers for the fault, scale and hostile-input tests (imported by name from this folder)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from polyalign.data.records import ParallelPair
from polyalign.data.writers import write_canonical
from preference_prompts import make_pairs

REPO = Path(__file__).resolve().parents[2]
PY = sys.executable

def write_pairs(path: Path, n: int) -> Path:
    write_canonical(make_pairs(n, numbered=True), path)
    return path


def custom_prompts_csv(tmp_path: Path, n: int = 3) -> Path:
    """A ``custom`` benchmark file of ``n`` English prompts (columns ``prompt``, ``lang``)."""
    data = tmp_path / "prompts.csv"
    data.write_text("prompt,lang\n" + "".join(f"Question {i}: say hi,en\n" for i in range(n)))
    return data


def write_parallel(path: Path, n: int) -> Path:
    # Target texts differ from the dominant ones, so the reward gaps differ and MPO has a gradient.
    dom, tgt = make_pairs(n, "en", "d", numbered=True), make_pairs(n + 3, "de", "t", numbered=True)[3:]
    write_canonical([ParallelPair(id=f"m{i}", dominant=d, target=t) for i, (d, t) in enumerate(zip(dom, tgt))], path)
    return path


def recipe(path: Path, **settings: Any) -> Path:
    """A CPU recipe: tiny numbers, no bf16, no reporting; ``settings`` override."""
    base: dict[str, Any] = {
        "method": "dpo", "detect_language": False, "max_length": 96, "max_prompt_length": 48,
        "learning_rate": 1.0e-3, "lr_scheduler_type": "constant", "warmup_steps": 0, "max_steps": 3,
        "per_device_train_batch_size": 8, "per_device_eval_batch_size": 8, "gradient_accumulation_steps": 1,
        "optim": "adamw_torch", "weight_decay": 0.0, "logging_steps": 1, "save_strategy": "no", "use_cpu": True,
        "bf16": False, "report_to": [], "gradient_checkpointing": False, "dataloader_num_workers": 0, "seed": 0,
    }
    base.update(settings)
    path.write_text(yaml.safe_dump(base, sort_keys=True))
    return path


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))
    out.update(extra)
    return out


def cli(args: list[str], *, cwd: Path, timeout: float = 120, **extra_env: str) -> subprocess.CompletedProcess:
    """``python -m polyalign ARGS`` as a real subprocess."""
    return subprocess.run([PY, "-m", "polyalign", *args], cwd=cwd, capture_output=True, text=True,
                          env=env(**extra_env), timeout=timeout)


def load_weights(folder: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(folder / "model.safetensors"))


def max_abs_diff(a: dict[str, Any], b: dict[str, Any]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
