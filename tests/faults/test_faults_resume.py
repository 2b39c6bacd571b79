"""SIGKILL mid-run, then ``resume_from_checkpoint: auto``: same final weights, no reference forwards.

The training process is a real ``python -m polyalign train`` subprocess whose Trainer gets one
extra callback (added by a small launcher script, not by any polyalign setting) that sends
SIGKILL to its own process at the end of optimizer step 7: checkpoints exist for steps 3 and 6
(``save_steps: 3``), step 7 is done but never saved. The rerun with ``resume_from_checkpoint:
auto`` must pick checkpoint-6 (and skip a crash-truncated ``checkpoint-9`` planted without its
``trainer_state.json``), redo step 7, finish at step 8 and end with the weights of an
uninterrupted run: every parameter within 1e-6 (AdamW state, scheduler, RNG and data order are
restored, so the arithmetic is the same; observed 0.0).
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from faults_helpers import PY, env, load_weights, max_abs_diff, recipe, write_pairs
from polyalign.training.distributed import resolve_resume

PARAM_ATOL = 1e-6

KILLER = '''
import os, signal, sys
from transformers import TrainerCallback
from polyalign.training import trainer as module

class SigkillAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

original = module.PolyalignTrainer.__init__
def patched(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.add_callback(SigkillAt())
module.PolyalignTrainer.__init__ = patched

from polyalign.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _train(tmp_path: Path, config: Path, *, kill_at: int | None = None, **overrides) -> subprocess.CompletedProcess:
    extra = [x for k, v in overrides.items() for x in (f"--{k}", str(v))]
    if kill_at is None:
        cmd = [PY, "-m", "polyalign", "train", "--config", str(config), *extra]
        return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env(), timeout=180)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    cmd = [PY, str(script), "train", "--config", str(config), *extra]
    return subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env=env(KILL_AT_STEP=str(kill_at)),
                          timeout=180)


@pytest.mark.slow
def test_sigkill_then_resume_auto_matches_uninterrupted_run(tmp_path):
    from polyalign.models import save_tiny_checkpoint

    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", "llama")
    data = write_pairs(tmp_path / "pairs.jsonl", 16)
    common = dict(method="dpo", model_name_or_path=str(ckpt), train_file=str(data), max_steps=8,
                  per_device_train_batch_size=4, save_strategy="steps", save_steps=3, nll_weight=0.5)
    full = recipe(tmp_path / "full.yaml", output_dir=str(tmp_path / "full"),
                  reference_cache_dir=str(tmp_path / "cache_full"), **common)
    crash = recipe(tmp_path / "crash.yaml", output_dir=str(tmp_path / "crash"),
                   reference_cache_dir=str(tmp_path / "cache_crash"), **common)

    done = _train(tmp_path, full)
    assert done.returncode == 0, done.stderr[-3000:]

    killed = _train(tmp_path, crash, kill_at=7)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    out = tmp_path / "crash"
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert not (out / "final").exists()
    # A checkpoint cut short by a crash: weights written, trainer_state.json (written last) missing.
    shutil.copytree(out / "checkpoint-6", out / "checkpoint-9")
    (out / "checkpoint-9" / "trainer_state.json").unlink()
    assert resolve_resume("auto", out) == str(out / "checkpoint-6")

    resumed = _train(tmp_path, crash, resume_from_checkpoint="auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "skipping incomplete checkpoint" in resumed.stderr and "checkpoint-9" in resumed.stderr
    info = json.loads((out / "final" / "run_info.json").read_text())
    assert info["resumed_from"] == str(out / "checkpoint-6")
    assert info["reference_cache"]["train"] == {**info["reference_cache"]["train"], "hit": True, "forward_calls": 0}
    rank = json.loads((out / "ranks" / "rank-0.json").read_text())
    assert rank["reference_forward_calls"] == 0
    # The history restored from checkpoint-6 (steps 1-6) plus steps 7 and 8 of the resumed process.
    assert [h["step"] for h in info["log_history"] if "loss" in h] == list(range(1, 9))
    full_losses = {h["step"]: h["loss"] for h in json.loads((tmp_path / "full" / "final" / "run_info.json")
                                                            .read_text())["log_history"] if "loss" in h}
    for h in info["log_history"]:
        if "loss" in h:
            assert abs(h["loss"] - full_losses[h["step"]]) <= 1e-6
    w_full, w_resumed = load_weights(tmp_path / "full" / "final"), load_weights(out / "final")
    assert max_abs_diff(w_full, load_weights(ckpt)) > 1e-3
    assert max_abs_diff(w_full, w_resumed) <= PARAM_ATOL


def test_resume_setting_resolution(tmp_path):
    from polyalign.errors import UserError

    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path / "nothing-yet") is None
    with pytest.raises(UserError) as err:
        resolve_resume(str(tmp_path / "checkpoint-5"), tmp_path)
    assert err.value.field == "resume_from_checkpoint" and "checkpoint-5" in str(err.value)
