"""FSDP2 (2 CPU processes, gloo, ``polyalign train`` under ``torchrun``): crash-resume and LoRA.

Both go through the real Trainer with the ``fsdp2_launch.py`` shim (accelerate 1.15 never picks
FSDP on CPU; see ``test_fsdp2.py``), recipe ``fsdp: true`` + ``fsdp_config`` ``version: 2``.

- **Resume.** A run of 4 steps (global batch 8 = 4 per rank, 16 examples: 2 epochs; linear
  learning-rate decay, so the scheduler state matters too) saves ``checkpoint-2``. A launcher adds
  one callback that, at the end of step 3, has each rank write its pid and wait; the test then
  SIGKILLs the torchrun agent's process group and both workers (each in its own session). The
  rerun with ``resume_from_checkpoint: auto`` must resume from ``checkpoint-2``, make 0
  reference forwards on every rank, log the uninterrupted FSDP2 run's losses for steps 1-4
  (within 1e-6) and end with its weights (within 1e-6; observed 0.0). That needs the optimizer
  state: the same resume with the checkpoint's AdamW state emptied ended 1.1e-3 away (measured
  once by hand, not a test). Checked for ``FULL_STATE_DICT`` (``pytorch_model_fsdp.bin`` +
  ``optimizer.bin``, gathered by rank 0; the AdamW state of every parameter at step 2 is read
  back here) and ``SHARDED_STATE_DICT`` (accelerate's FSDP2 default: ``torch.distributed
  .checkpoint`` folders ``pytorch_model_fsdp_0/`` + ``optimizer_0/``, one shard file per rank),
  each for full fine-tuning and LoRA, and sharded with dpo + MLC (extractor compared too). Before
  three fixes: ``auto`` took a sharded checkpoint (no top-level weights file) for incomplete and
  silently started afresh; ``final/`` held no weights under a sharded state dict
  (``Trainer.save_model`` writes none); and MLC resume crashed (``KeyError:
  'policy.model.embed_tokens.weight'``: the FSDP checkpoint of the whole wrapper was loaded
  into the inner policy).
- **LoRA.** dpo and mpo with LoRA adapters (r 4, no dropout, all linear layers) under FSDP2
  against one process on the same global batch: every logged loss within 1e-5, the saved
  adapters (``adapter_model.safetensors`` only) within 2e-5, and the reference values equal on
  both and equal to the plain checkpoint's values computed here. (The reference pass runs with
  the adapters disabled, before the model is sharded; at that point ``lora_B`` is still 0, so
  this checks the FSDP2 run's cache, not the disabling, which test_training_methods.py covers.)
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from fsdp2_helpers import (
    FSDP_CONFIG,
    max_diff,
    recipe,
    run_env,
    torchrun,
    train_fsdp2,
    train_one_process,
    weights,
    write_data,
)

pytest.importorskip("torch.distributed.fsdp", reason="needs torch.distributed (FSDP2)")

RESUME_ATOL = 1e-6
LOSS_ATOL = 1e-5
PARAM_ATOL = 2e-5
LORA = {"use_lora": True, "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "lora_target_modules": "all-linear"}

# fsdp2_launch (imported for its patch) + one callback: at the end of step KILL_AT_STEP each rank
# writes its pid and waits to be killed, so the kill lands mid-run at a known step.
STOPPER = '''
import os, sys, time
import fsdp2_launch  # noqa: F401  (lets accelerate pick FSDP on CPU)
from transformers import TrainerCallback
from polyalign.training import trainer as module

class StopAt(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == int(os.environ["KILL_AT_STEP"]):
            path = os.path.join(os.environ["PID_DIR"], f"rank-{os.environ['RANK']}.pid")
            with open(path + ".tmp", "w") as f:
                f.write(str(os.getpid()))
            os.replace(path + ".tmp", path)
            time.sleep(600)

original = module.PolyalignTrainer.__init__
def patched(self, *args, **kwargs):
    original(self, *args, **kwargs)
    self.add_callback(StopAt())
module.PolyalignTrainer.__init__ = patched

from polyalign.cli import main
sys.exit(main(sys.argv[1:]))
'''


def _killed_at(config: Path, tmp: Path, step: int) -> None:
    """Run ``config`` under torchrun and SIGKILL every process once both ranks finished ``step``."""
    script, pids, log = tmp / "stopper.py", tmp / "pids", tmp / "killed.log"
    script.write_text(STOPPER)
    pids.mkdir()
    with log.open("w") as err:  # a file, not a pipe: nobody reads while we wait
        proc = subprocess.Popen(torchrun(script, "train", "--config", str(config)), cwd=tmp,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                env=run_env(KILL_AT_STEP=str(step), PID_DIR=str(pids)))
        deadline = time.monotonic() + 240
        while len(list(pids.glob("rank-*.pid"))) < 2:
            assert proc.poll() is None, log.read_text()[-3000:]  # ended before reaching the step
            assert time.monotonic() < deadline, "ranks never reached the kill step"
            time.sleep(0.2)
        workers = [int(p.read_text()) for p in pids.glob("rank-*.pid")]
        os.killpg(proc.pid, signal.SIGKILL)  # the torchrun agent's group
        for pid in workers:  # torchrun starts each worker in its own session
            os.killpg(pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    deadline = time.monotonic() + 30
    while not all(_dead(pid) for pid in workers):
        assert time.monotonic() < deadline, workers
        time.sleep(0.1)


def _dead(pid: int) -> bool:
    """Gone, or a zombie nobody reaped yet (its parent, the torchrun agent, was killed too)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _history(out: Path) -> dict[int, float]:
    info = json.loads((out / "final" / "run_info.json").read_text())
    return {h["step"]: h["loss"] for h in info["log_history"] if "loss" in h}


def _ranks(out: Path, n: int = 2) -> list[dict]:
    return [json.loads((out / "ranks" / f"rank-{i}.json").read_text()) for i in range(n)]


def _saved(folder: Path, lora: bool) -> dict:
    return weights(folder, "adapter_model.safetensors" if lora else "model.safetensors")


@pytest.fixture(scope="module")
def resume_setup(tiny_ckpt, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("fsdp2_resume")
    data = write_data(tmp)
    common = {"model_name_or_path": str(tiny_ckpt), "train_file": str(data["pairs"]), "method": "dpo",
              "max_steps": 4, "per_device_train_batch_size": 4, "save_strategy": "steps", "save_steps": 2,
              "lr_scheduler_type": "linear", "fsdp": True}
    variants = {"plain": {}, "lora": LORA,
                "mlc": {"mlc_weight": 0.8, "mlc_every": 1, "nll_weight": 0.3, "variants_file": str(data["variants"])}}
    return {"tmp": tmp, "ckpt": tiny_ckpt, "common": common, "variants": variants, "full": {}}


def _uninterrupted(setup: dict, variant: str) -> Path:
    """The uninterrupted FSDP2 run of ``variant`` (``FULL_STATE_DICT``), run once per module."""
    if variant not in setup["full"]:
        tmp, name = setup["tmp"], f"full_{variant}"
        config = recipe(tmp / f"{name}.yaml", output_dir=str(tmp / name), reference_cache_dir=str(tmp / f"c_{name}"),
                        fsdp_config=FSDP_CONFIG, **setup["common"], **setup["variants"][variant])
        train_fsdp2(config, tmp)
        setup["full"][variant] = tmp / name
    return setup["full"][variant]


@pytest.mark.slow
@pytest.mark.parametrize("case", ["full_state_dict", "sharded_state_dict", "lora_full_state_dict",
                                  "lora_sharded_state_dict", "mlc_sharded_state_dict"])
def test_fsdp2_sigkill_then_resume_matches_uninterrupted_run(resume_setup, case):
    variant, _, kind = case.partition("_") if case.startswith(("lora_", "mlc_")) else ("plain", "", case)
    kind, lora = kind.upper(), variant == "lora"
    tmp = resume_setup["tmp"] / case
    tmp.mkdir()
    full = _uninterrupted(resume_setup, variant)
    out = tmp / "crash"
    config = recipe(tmp / "crash.yaml", output_dir=str(out), reference_cache_dir=str(tmp / "cache"),
                    fsdp_config={**FSDP_CONFIG, "state_dict_type": kind}, **resume_setup["common"],
                    **resume_setup["variants"][variant])
    _killed_at(config, tmp, 3)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2"] and not (out / "final").exists()
    checkpoint = out / "checkpoint-2"
    files = {p.name for p in checkpoint.iterdir()}
    if kind == "FULL_STATE_DICT":  # gathered on rank 0: one model file, one optimizer file
        assert {"pytorch_model_fsdp.bin", "optimizer.bin"} <= files, files
        import torch

        optim = torch.load(checkpoint / "optimizer.bin", weights_only=True)
        assert optim["state"] and all(float(s["step"]) == 2 for s in optim["state"].values())
    else:  # torch.distributed.checkpoint folders, one shard file per rank
        assert {"pytorch_model_fsdp_0", "optimizer_0"} <= files, files
        for folder in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert len(list((checkpoint / folder).glob("*.distcp"))) == 2, folder

    train_fsdp2(config, tmp, "--resume_from_checkpoint", "auto")
    info = json.loads((out / "final" / "run_info.json").read_text())
    assert info["resumed_from"] == str(checkpoint)
    assert [r["reference_forward_calls"] for r in _ranks(out)] == [0, 0]
    assert [r["distributed_type"] for r in _ranks(out)] == ["FSDP", "FSDP"]
    done, resumed = _history(full), _history(out)
    assert sorted(resumed) == sorted(done) == [1, 2, 3, 4]
    loss_diff = max(abs(done[s] - resumed[s]) for s in done)
    w_full, w_resumed = _saved(full / "final", lora), _saved(out / "final", lora)
    w_diff = max_diff(w_full, w_resumed)
    if variant == "mlc":  # the extractor is trained, checkpointed and restored with the policy
        extractors = [weights(folder / "final" / "mlc_extractor") for folder in (full, out)]
        w_diff = max(w_diff, max_diff(*extractors))
    print(f"{case}: loss diff {loss_diff:.3g}, weight diff {w_diff:.3g}")
    assert loss_diff <= RESUME_ATOL, (done, resumed)
    assert w_diff <= RESUME_ATOL
    if lora:  # lora_B starts at 0: training moved it
        assert max(float(v.abs().max()) for k, v in w_full.items() if "lora_B" in k) > 1e-3
        assert not (out / "final" / "model.safetensors").exists()
    else:
        assert max_diff(w_full, weights(resume_setup["ckpt"])) > 1e-3  # training moved the weights


# -- LoRA under FSDP2 against one process -----------------------------------------------------------


def _reference_values(rank: dict) -> dict:
    from safetensors.torch import load_file

    return load_file(rank["reference_cache"]["train"]["path"])


@pytest.mark.slow
@pytest.mark.parametrize("method", ["dpo", "mpo"])
def test_fsdp2_lora_matches_one_process(tiny_ckpt, tmp_path, method):
    import torch

    from polyalign.models import load_model_and_tokenizer
    from polyalign.training.config import load_config
    from polyalign.training.datasets import load_training_data
    from polyalign.training.reference_cache import compute_reference_values

    data = write_data(tmp_path)["parallel" if method == "mpo" else "pairs"]
    common = {"model_name_or_path": str(tiny_ckpt), "train_file": str(data), "method": method,
              "learning_rate": 1e-2, **LORA}
    single = recipe(tmp_path / "single.yaml", output_dir=str(tmp_path / "single"),
                    reference_cache_dir=str(tmp_path / "c1"), per_device_train_batch_size=8, **common)
    multi = recipe(tmp_path / "multi.yaml", output_dir=str(tmp_path / "multi"),
                   reference_cache_dir=str(tmp_path / "c2"), per_device_train_batch_size=4, fsdp=True,
                   fsdp_config=FSDP_CONFIG, **common)
    train_one_process(single, tmp_path)
    train_fsdp2(multi, tmp_path)
    one_out, two_out = tmp_path / "single", tmp_path / "multi"
    assert [r["distributed_type"] for r in _ranks(two_out)] == ["FSDP", "FSDP"]
    one, two = _history(one_out), _history(two_out)
    assert sorted(one) == sorted(two) == [1, 2, 3]
    loss_diff = max(abs(one[s] - two[s]) for s in one)
    a1, a2 = (weights(out / "final", "adapter_model.safetensors") for out in (one_out, two_out))
    assert a1 and all("lora_" in k for k in a1)
    assert not (two_out / "final" / "model.safetensors").exists()  # adapters only, as in one process
    lora_b = {k: v for k, v in a1.items() if "lora_B" in k}
    assert max(float(v.abs().max()) for v in lora_b.values()) > 1e-3  # B starts at 0: training moved it
    adapter_diff = max_diff(a1, a2)
    # Reference values: the base model with the adapters disabled, on both, and from the plain checkpoint.
    r1, r2 = _reference_values(_ranks(one_out, 1)[0]), _reference_values(_ranks(two_out)[0])
    config = load_config(single)
    base, tokenizer = load_model_and_tokenizer(tiny_ckpt)
    dataset, _ = load_training_data(config, tokenizer, str(data), config.train_format)
    plain = compute_reference_values(base.eval(), dataset, method, pad_token_id=tokenizer.pad_token_id,
                                     batch_size=8, pooling=config.retain_pooling, chunk_size=config.logps_chunk_size)
    assert r1.keys() == r2.keys() and set(plain) <= set(r1)
    ref_diff = max(float((r1[k] - r2[k]).abs().max()) for k in r1)
    plain_diff = max(float((r1[k] - plain[k].to(r1[k].dtype)).abs().max()) for k in plain)
    print(f"lora {method}: loss diff {loss_diff:.3g}, adapter diff {adapter_diff:.3g}, "
          f"reference diff {ref_diff:.3g}, vs plain {plain_diff:.3g}")
    assert loss_diff <= LOSS_ATOL, (one, two)
    assert adapter_diff <= PARAM_ATOL
    assert ref_diff == 0.0
    assert plain_diff <= 1e-5
    assert torch.isfinite(torch.tensor(list(two.values()))).all()
