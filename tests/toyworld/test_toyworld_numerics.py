"""Pinned numerics of the demo's workers: the environment they start with takes effect, and
what it pins (ATen kernels, thread count, MKL branch) really changes float results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from polyalign.toyworld.numerics import (
    PINNED_ENV,
    check_pinned,
    numerics,
    numerics_key,
    pinned_environment,
    worker_environment,
)

REPO = Path(__file__).resolve().parents[2]
HAS_AVX2 = "avx2" in Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else False

# A small pretraining in a fresh interpreter: prints its numerics and a hash of the weights.
PROBE = """
import hashlib, json
from dataclasses import replace
from polyalign.toyworld.demo_config import quick_config
from polyalign.toyworld.numerics import numerics
from polyalign.toyworld.pretrain import _train_model
from polyalign.toyworld.tokenizer import build_word_tokenizer
from polyalign.toyworld.world import build_world
import sys, torch
cfg = quick_config()
pre = replace(cfg.pretrain, steps=12, warmup_steps=4, batch_size=16, num_threads=int(sys.argv[1]))
world = build_world(0, cfg.world)
model, _ = _train_model(world, build_word_tokenizer(world.lexicon.surface_vocab()), pre)
digest = hashlib.sha256()
for name, tensor in sorted(model.state_dict().items()):
    digest.update(name.encode()); digest.update(tensor.contiguous().numpy().tobytes())
print(json.dumps({"numerics": numerics(), "sha": digest.hexdigest()}))
"""


def _probe(env_overrides: dict[str, str | None], threads: int = 1) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA")}
    env.update({k: v for k, v in env_overrides.items() if v is not None})
    env.update(HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-c", PROBE, str(threads)], env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_pinned_environment_sets_and_restores(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "AVX2")
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    with pinned_environment("COMPATIBLE"):
        assert os.environ["MKL_CBWR"] == "COMPATIBLE"
        assert all(os.environ[k] == v for k, v in PINNED_ENV.items())
    assert os.environ["MKL_CBWR"] == "AVX2" and "ATEN_CPU_CAPABILITY" not in os.environ
    with pytest.raises(ValueError):
        worker_environment("AVX512")


def test_check_pinned_refuses_an_unpinned_process(monkeypatch):
    for key in PINNED_ENV:
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(RuntimeError, match="ATEN_CPU_CAPABILITY"):
        check_pinned("AUTO")


def test_numerics_key_names_the_cpu_only_under_mkl_auto(monkeypatch):
    monkeypatch.setenv("MKL_CBWR", "COMPATIBLE")
    portable = numerics_key()
    assert "cpu_vendor" not in portable and portable["mkl_cbwr"] == "COMPATIBLE"
    monkeypatch.setenv("MKL_CBWR", "AUTO")
    auto = numerics_key()
    assert auto["cpu_vendor"] == numerics()["cpu_vendor"] and auto != portable


@pytest.mark.skipif(not HAS_AVX2, reason="the pin is ATen's AVX2 kernels: this CPU has no AVX2")
def test_pins_take_effect_and_matter():
    """Each variable the demo pins changes the weights of the same 12-step pretraining when
    changed alone (so it must be pinned), and the pinned run repeats bit for bit."""
    pinned = {**PINNED_ENV, "MKL_CBWR": "COMPATIBLE"}
    first, again = _probe(pinned), _probe(pinned)
    assert first["numerics"]["aten_cpu_capability"] == "AVX2" and first["numerics"]["mkl_cbwr"] == "COMPATIBLE"
    assert first["sha"] == again["sha"]
    assert _probe({**pinned, "MKL_CBWR": "AUTO"})["sha"] != first["sha"]  # MKL's code branch
    assert _probe(pinned, threads=2)["sha"] != first["sha"]  # the reduction order of two threads
    default_kernels = _probe({**pinned, "ATEN_CPU_CAPABILITY": "default"})
    assert default_kernels["numerics"]["aten_cpu_capability"] == "DEFAULT"
    assert default_kernels["sha"] != first["sha"]  # ATen's vectorised kernels
