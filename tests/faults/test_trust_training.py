"""Issue 21 item 8: a training run never resumes from, nor replaces, another run's output.

Before the fix a second recipe trained into the same ``output_dir`` silently took the first
run's newest ``checkpoint-N`` (``resume_from_checkpoint: auto``) and replaced its ``final/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from faults_helpers import recipe, write_pairs
from polyalign.errors import UserError


@pytest.fixture()
def setup(tmp_path, monkeypatch):
    from polyalign.models import save_tiny_checkpoint

    monkeypatch.setenv("POLYALIGN_CACHE_DIR", str(tmp_path / "hashes"))
    ckpt = save_tiny_checkpoint(tmp_path / "ckpt", "llama")
    data = write_pairs(tmp_path / "pairs.jsonl", 8)
    return ckpt, data


def _train(tmp_path: Path, ckpt: Path, data: Path, out: Path, **settings):
    from polyalign.training.config import load_config
    from polyalign.training.run import train

    base = dict(model_name_or_path=str(ckpt), train_file=str(data), output_dir=str(out), max_steps=2,
                per_device_train_batch_size=4, save_strategy="steps", save_steps=1,
                reference_cache_dir=str(tmp_path / "refcache"))
    path = recipe(tmp_path / f"r{len(list(tmp_path.glob('r*.yaml')))}.yaml", **{**base, **settings})
    return train(load_config(path))


def test_output_dir_of_another_run_is_refused_and_never_resumed_from(setup, tmp_path):
    ckpt, data = setup
    out = tmp_path / "run"
    first = _train(tmp_path, ckpt, data, out, learning_rate=1e-3)
    owner = json.loads((out / "polyalign_run.json").read_text())
    assert owner["fingerprint"] == first["run_fingerprint"]
    for folder in (out / "checkpoint-1", out / "checkpoint-2", out / "final"):
        assert json.loads((folder / "polyalign_run.json").read_text())["fingerprint"] == first["run_fingerprint"]
    final_before = (out / "final" / "model.safetensors").read_bytes()

    # Another recipe (another learning rate) into the same folder: refused, nothing touched.
    with pytest.raises(UserError, match="holds another run .learning_rate") as err:
        _train(tmp_path, ckpt, data, out, learning_rate=5e-4, resume_from_checkpoint="auto")
    assert err.value.field == "output_dir"
    assert (out / "final" / "model.safetensors").read_bytes() == final_before

    # An explicit resume from that run's checkpoint in a fresh folder: refused as well.
    with pytest.raises(UserError, match="does not match this run") as err:
        _train(tmp_path, ckpt, data, tmp_path / "other", learning_rate=5e-4,
               resume_from_checkpoint=str(out / "checkpoint-2"))
    assert err.value.field == "resume_from_checkpoint"

    # With the explicit overwrite flag: a fresh start (the old checkpoint-2 is not resumed), a new final/.
    second = _train(tmp_path, ckpt, data, out, learning_rate=5e-4, resume_from_checkpoint="auto",
                    overwrite_output_dir=True)
    assert second["resumed_from"] is None
    assert [h["step"] for h in second["log_history"] if "loss" in h] == [1, 2]
    assert second["run_fingerprint"] != first["run_fingerprint"]
    assert json.loads((out / "final" / "polyalign_run.json").read_text())["fingerprint"] == second["run_fingerprint"]

    # The same recipe again (longer): it owns the folder, so auto resumes from its own checkpoint.
    third = _train(tmp_path, ckpt, data, out, learning_rate=5e-4, resume_from_checkpoint="auto", max_steps=3)
    assert third["resumed_from"] == str(out / "checkpoint-2")


def test_a_non_empty_folder_without_a_run_fingerprint_is_refused(setup, tmp_path):
    ckpt, data = setup
    out = tmp_path / "someone_elses"
    out.mkdir()
    (out / "notes.txt").write_text("not a polyalign run")
    with pytest.raises(UserError, match="no readable polyalign run fingerprint"):
        _train(tmp_path, ckpt, data, out)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
