"""Settings of ``polyalign demo``: the full run and the reduced ``--quick`` one.

Every setting is fixed a priori from the feasibility notes (``TOYWORLD-NOTES.md``), never
tuned per method on the test split:

- the world: 6 languages, 25% shared words, the refusal's first word shared
  (:class:`~polyalign.toyworld.world.WorldConfig` defaults);
- the base model: tiny Llama, hidden 128, 2 layers, 1,200 steps of batch 64
  (:class:`~polyalign.toyworld.pretrain.PretrainConfig` defaults);
- the same alignment budget for every method: ``steps`` optimiser steps of
  ``batch_size`` examples at learning rate ``lr`` (linear decay, no warmup), beta 0.1,
  plus a length-normalised NLL term of weight 1 on the chosen answer for DPO (plain DPO
  collapsed in the notes);
- MPO: starts from the English-DPO checkpoint, which is also its reference (the base
  model's English gap favours compliance, so it is no target), ``mpo_beta`` 1, 20% of the
  target pairs with chosen and rejected swapped. Its stage has the same steps, batch and
  learning rate as the others, so the MPO arm has had the DPO stage *plus* its own;
- DPO+MLC: the DPO arm's settings plus the MLC term at the middle layer (hidden-state
  index 1 of the 2-layer model) with weight 0.1 and temperature 0.2 -- the released
  setting (last layer, weight 0.8) erased language identity in the notes.

Numerics (:mod:`polyalign.toyworld.numerics`): every seed runs in a fresh process with one
thread and ATen's AVX2 kernels; ``mkl_branch`` is MKL's code branch, ``AUTO`` for the full
demo (results then also depend on the CPU vendor and instruction set, recorded with them)
and ``COMPATIBLE`` for ``--quick`` (the same bits on any x86-64 CPU; it costs ~70% more
pretraining CPU time, affordable only at the reduced size), which CI checks bit for bit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from polyalign.toyworld.pretrain import PretrainConfig
from polyalign.toyworld.world import WorldConfig

METHODS = ("dpo", "mpo", "dpo_mlc")
# Display names (report, tables) of the run folders.
DISPLAY = {"base": "base", "dpo": "dpo", "mpo": "mpo", "dpo_mlc": "dpo+mlc"}


@dataclass(frozen=True)
class AlignConfig:
    """The alignment budget and objective settings shared by all methods."""

    steps: int = 150
    batch_size: int = 32
    lr: float = 1e-4
    beta: float = 0.1
    nll_weight: float = 1.0
    mpo_beta: float = 1.0
    mpo_noise_rate: float = 0.2
    mlc_weight: float = 0.1
    mlc_layer: int = 1
    mlc_tau: float = 0.2
    mlc_every: int = 2
    mlc_dim: int = 128
    eval_batch_size: int = 64

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class DemoConfig:
    """World, base model, alignment budget and which methods to run."""

    name: str = "full"
    world: WorldConfig = field(default_factory=WorldConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    align: AlignConfig = field(default_factory=AlignConfig)
    methods: tuple[str, ...] = METHODS
    mkl_branch: str = "AUTO"

    def for_seed(self, seed: int) -> DemoConfig:
        """The seed drives the world, the base model's initialisation and data order, and alignment."""
        return replace(self, pretrain=replace(self.pretrain, seed=seed))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "world": self.world.to_dict(), "pretrain": self.pretrain.to_dict(),
                "align": self.align.to_dict(), "methods": list(self.methods), "mkl_branch": self.mkl_branch}


def full_config() -> DemoConfig:
    """The default demo: ~185 CPU seconds per seed (measured), 4 seeds as 2 rounds of 2 processes on 2 cores."""
    return DemoConfig()


def quick_config() -> DemoConfig:
    """A reduced run for the test suite: smaller world, smaller and shorter-trained model.

    Compliance stays at the pretraining default of 90%, so the base model answers most
    English harmful prompts; English DPO must bring that down within ``steps`` steps.
    """
    return DemoConfig(
        name="quick",
        world=WorldConfig(acts_per_category=4, n_countries=8, n_templates=6, heldout_templates=2),
        pretrain=PretrainConfig(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=128, steps=300,
                                batch_size=32, lr=3e-3, warmup_steps=30),
        align=AlignConfig(steps=30, batch_size=16, lr=3e-4, mlc_dim=64),
        mkl_branch="COMPATIBLE",
    )
