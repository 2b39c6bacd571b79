"""What the toy world's numbers depend on, and the worker environment that pins it.

A seed reproduces the same world (pure Python, seeded), but the base model's weights, and
with them every number of the demo, are float32 CPU computations whose rounding depends on:

- the number of threads (intra-op reductions are split differently): pinned to one thread
  per seed process (``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` = 1 and ``torch.set_num_threads(1)``);
- ATen's vectorised kernels, chosen per CPU at start-up (AVX-512 on hosts that have it, AVX2
  otherwise): pinned to AVX2 with ``ATEN_CPU_CAPABILITY=avx2``, which every x86-64 host of
  this kind has. Measured: one 60-step pretraining gives different weights under AVX-512 and
  AVX2 kernels on the same machine;
- MKL's matrix-multiply code branch (its ``AUTO`` branch dispatches on CPU vendor and
  instruction set): ``MKL_CBWR=COMPATIBLE`` pins it on any CPU, Intel or AMD, at ~70% more
  pretraining CPU time (measured), so only the reduced ``--quick`` config pins it; the full demo
  keeps ``AUTO`` and records the CPU vendor and model it ran on (:func:`numerics`);
- the library versions (pinned in ``pyproject.toml``; torch's is recorded).

These variables are read when torch and MKL start, so they are set in the environment of
fresh worker processes (:func:`pinned_environment`), never changed in a running one; the
worker checks that they took effect (:func:`check_pinned`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

# Variables set in every demo worker's environment, with why.
PINNED_ENV = {
    "OMP_NUM_THREADS": "1",  # one thread: a fixed reduction order
    "MKL_NUM_THREADS": "1",
    "ATEN_CPU_CAPABILITY": "avx2",  # the same ATen kernels on AVX2 and AVX-512 hosts
    "ONEDNN_MAX_CPU_ISA": "AVX2",  # oneDNN kernels, where torch routes an op through it
}
MKL_BRANCHES = ("AUTO", "COMPATIBLE")


def worker_environment(mkl_branch: str) -> dict[str, str]:
    """The variables a demo worker starts with: :data:`PINNED_ENV` and ``MKL_CBWR``."""
    if mkl_branch not in MKL_BRANCHES:
        raise ValueError(f"mkl_branch must be one of {MKL_BRANCHES}, got {mkl_branch!r}")
    return {**PINNED_ENV, "MKL_CBWR": mkl_branch}


@contextlib.contextmanager
def pinned_environment(mkl_branch: str) -> Iterator[None]:
    """Set :func:`worker_environment` in ``os.environ`` while worker processes are spawned
    (they inherit it), then restore the previous values."""
    wanted = worker_environment(mkl_branch)
    previous = {k: os.environ.get(k) for k in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _cpu_info() -> tuple[str, str, bool]:
    """``(vendor, model name, has AVX-512F)`` from ``/proc/cpuinfo`` (empty when unreadable)."""
    vendor = model = ""
    flags: list[str] = []
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id" and not vendor:
                    vendor = value
                elif key == "model name" and not model:
                    model = value
                elif key == "flags" and not flags:
                    flags = value.split()
    except OSError:
        pass
    return vendor, model, "avx512f" in flags


def numerics() -> dict[str, Any]:
    """What this process's float results depend on (recorded in the demo's outputs)."""
    import torch

    vendor, model, avx512 = _cpu_info()
    return {"torch": torch.__version__, "threads": torch.get_num_threads(),
            "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "mkl_cbwr": os.environ.get("MKL_CBWR", "AUTO"), "cpu_vendor": vendor, "cpu_model": model,
            "cpu_avx512": avx512}


def numerics_key() -> dict[str, Any]:
    """The part of :func:`numerics` that determines results (part of the base-model cache key).

    Under ``MKL_CBWR=COMPATIBLE`` the CPU does not matter; under ``AUTO`` MKL's branch follows
    the CPU's vendor and instruction set, so both are part of the key.
    """
    info = numerics()
    key = {k: info[k] for k in ("torch", "aten_cpu_capability", "mkl_cbwr")}
    if info["mkl_cbwr"] != "COMPATIBLE":
        key.update(cpu_vendor=info["cpu_vendor"], cpu_avx512=info["cpu_avx512"])
    return key


def check_pinned(mkl_branch: str) -> dict[str, Any]:
    """Raise if this process was not started with the pinned environment; return :func:`numerics`.

    A CPU without AVX2 runs ATen's default kernels (``aten_cpu_capability`` is then not
    ``AVX2``): that is recorded, not refused, and its numbers will differ from an AVX2 host's.
    """
    import torch

    torch.set_num_threads(1)
    info = numerics()
    wrong = {k: os.environ.get(k) for k, v in worker_environment(mkl_branch).items() if os.environ.get(k) != v}
    if wrong:
        raise RuntimeError(f"demo worker not pinned as expected (variable: value found): {wrong}")
    return info
