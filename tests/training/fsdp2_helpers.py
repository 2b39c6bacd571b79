"""Helpers shared by the FSDP2 tests (``test_fsdp2.py``, ``test_fsdp2_resume_lora.py``).

Imported by name (pytest puts this folder on ``sys.path``). Runs go through real subprocesses:
``python -m polyalign train`` for one process, ``torchrun --nproc_per_node 2`` +
``fsdp2_launch.py`` (the shim letting accelerate pick FSDP on CPU) for FSDP2.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from polyalign.data.records import Message, ParallelPair, PromptVariants
from polyalign.data.writers import write_canonical
from preference_prompts import make_pairs
from training_helpers import REPO

LAUNCH = Path(__file__).with_name("fsdp2_launch.py")
STEPS = 3
FSDP_CONFIG = {"version": 2, "transformer_layer_cls_to_wrap": ["LlamaDecoderLayer"], "reshard_after_forward": True,
               "state_dict_type": "FULL_STATE_DICT"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_data(tmp: Path) -> dict[str, Path]:
    """16 distinct preference pairs, 16 parallel (MPO) pairs and prompt variants in 3 languages."""
    pairs = make_pairs(16)
    # Distinct prompts per example (the index), so every example has its own lengths and values.
    pairs = [p.__class__(id=p.id, prompt=(Message("user", f"{p.prompt[0].content} ({i})"),),
                         chosen=p.chosen + " ok" * (i % 3), rejected=p.rejected, language="en")
             for i, p in enumerate(pairs)]
    write_canonical(pairs, tmp / "pairs.jsonl")
    target = make_pairs(19, "de", "t")[3:]  # other texts than the dominant ones: the reward gaps differ
    write_canonical([ParallelPair(id=f"m{i}", dominant=d, target=t) for i, (d, t) in enumerate(zip(pairs, target))],
                    tmp / "parallel.jsonl")
    words = {"fr": "Question", "de": "Frage", "ru": "Vopros"}
    write_canonical([PromptVariants(id=p.id, prompts={lang: (Message("user", f"{w} {i}: {p.prompt[0].content}"),)
                                                      for lang, w in words.items()})
                     for i, p in enumerate(pairs)], tmp / "variants.jsonl")
    return {"pairs": tmp / "pairs.jsonl", "parallel": tmp / "parallel.jsonl", "variants": tmp / "variants.jsonl"}


def recipe(path: Path, **settings: Any) -> Path:
    """``recipes/tiny_cpu_mpo.yaml`` made fast and CPU-only; ``settings`` override."""
    import yaml

    base = {"detect_language": False, "max_examples": None, "max_length": 96, "max_prompt_length": 48,
            "learning_rate": 1e-3, "max_steps": STEPS, "logging_steps": 1, "per_device_eval_batch_size": 8,
            "save_strategy": "no", "use_cpu": True, "bf16": False, "report_to": []}
    config = {**yaml.safe_load((REPO / "recipes" / "tiny_cpu_mpo.yaml").read_text()), **base, **settings}
    path.write_text(yaml.safe_dump(config))
    return path


def run_env(**extra: str) -> dict[str, str]:
    return dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=os.pathsep.join([str(REPO), str(LAUNCH.parent)]), **extra)


def torchrun(script: Path, *args: str) -> list[str]:
    """The command line running ``script ARGS`` on 2 local processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), str(script), *args]


def train_one_process(config: Path, cwd: Path) -> None:
    one = subprocess.run([sys.executable, "-m", "polyalign", "train", "--config", str(config)], cwd=cwd,
                         capture_output=True, text=True, env=run_env(), timeout=300)
    assert one.returncode == 0, one.stderr[-3000:]


def train_fsdp2(config: Path, cwd: Path, *overrides: str) -> None:
    two = subprocess.run(torchrun(LAUNCH, "train", "--config", str(config), *overrides), cwd=cwd,
                         capture_output=True, text=True, env=run_env(), timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]


def weights(folder: Path, name: str = "model.safetensors") -> dict:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
