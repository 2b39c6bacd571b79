"""Progress reporting of the demo: worker processes send events, the parent draws the bars.

Workers (one process per seed) put ``(seed, stage, done, total)`` tuples on a queue; the
parent keeps one tqdm bar per seed. The project's trainer builds its ``Trainer`` inside
``train(config)``; transformers adds ``transformers.trainer.DEFAULT_PROGRESS_CALLBACK``
to every Trainer when ``disable_tqdm`` is false -- the hook transformers itself uses for
notebook progress bars -- so :func:`install_trainer_progress` sets it, in the worker
process only, to a callback that reports optimiser steps.
"""

from __future__ import annotations

import contextlib
import queue as queue_module
import sys
from collections.abc import Callable, Iterator
from typing import Any

from transformers import TrainerCallback


class _StepCallback(TrainerCallback):
    """Reports ``(global_step, max_steps)`` after every optimiser step."""

    report: Callable[[int, int], None] = staticmethod(lambda done, total: None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        type(self).report(state.global_step, state.max_steps)


def install_trainer_progress(report: Callable[[int, int], None]) -> None:
    """Make every Trainer created afterwards in this process call ``report(done, total)``
    (until :func:`quiet_worker` exits)."""
    import transformers.trainer as trainer_module

    _StepCallback.report = staticmethod(report)
    trainer_module.DEFAULT_PROGRESS_CALLBACK = _StepCallback


@contextlib.contextmanager
def quiet_worker() -> Iterator[None]:
    """One torch thread, no transformers progress bars (they would break the per-seed bars);
    the previous thread count, bar setting, Trainer progress callback and the global RNGs
    (the Trainer seeds ``random``, numpy and torch) are restored on exit, so an in-process
    run leaves its caller as it was."""
    import random

    import numpy as np
    import torch
    import transformers.trainer as trainer_module
    from transformers.utils import logging as hf_logging

    threads, bars = torch.get_num_threads(), hf_logging.is_progress_bar_enabled()
    callback = trainer_module.DEFAULT_PROGRESS_CALLBACK
    py_state, np_state = random.getstate(), np.random.get_state()
    torch.set_num_threads(1)  # one process per core beat two threads per process (notes)
    hf_logging.disable_progress_bar()
    try:
        with torch.random.fork_rng(devices=[]):
            yield
    finally:
        torch.set_num_threads(threads)
        if bars:
            hf_logging.enable_progress_bar()
        trainer_module.DEFAULT_PROGRESS_CALLBACK = callback
        random.setstate(py_state)
        np.random.set_state(np_state)


class SeedBars:
    """One tqdm bar per seed, fed by ``(seed, stage, done, total)`` events (``stage`` shown)."""

    def __init__(self, seeds: list[int], *, enabled: bool = True) -> None:
        from tqdm import tqdm

        self.enabled = enabled
        self.bars = {seed: tqdm(total=1, desc=f"seed {seed}", position=i, leave=True, file=sys.stderr,
                                disable=not enabled, dynamic_ncols=True, mininterval=0.5,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]")
                     for i, seed in enumerate(seeds)}

    def update(self, seed: int, stage: str, done: int, total: int) -> None:
        bar = self.bars[seed]
        desc = f"seed {seed} {stage:<16}"
        if bar.total != total or bar.desc != desc or done < bar.n:
            bar.reset(total=total)
            bar.set_description_str(desc, refresh=False)
        bar.update(done - bar.n)  # tqdm throttles redraws (mininterval)

    def drain(self, events: Any, timeout: float = 0.2) -> None:
        """Apply every event waiting on ``events`` (a queue), waiting up to ``timeout`` for the first."""
        try:
            event = events.get(timeout=timeout)
        except queue_module.Empty:
            return
        while True:
            self.update(*event)
            try:
                event = events.get_nowait()
            except queue_module.Empty:
                return

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
