"""Worker of ``test_fsdp2.py``: run under ``torchrun --nproc_per_node 2`` (gloo, CPU).

``python fsdp2_worker.py SPEC.json OUT.json``; SPEC is ``{"cases": [{"name", "settings"}], "probe": {...}}``
(``settings``: overrides of ``recipes/tiny_cpu_mpo.yaml``). For every case, with polyalign's own
data pipeline, reference values, MLC wrapper and objective (:func:`compute_objective`):

- rank 0 trains the plain model in one process on the global batch (the fast path: the decoder
  only, no FSDP) for ``max_steps`` AdamW steps;
- both ranks load the same model again, shard it with FSDP2 (the case's ``layout``, see
  :func:`_shard`; the model sharded is the one the Trainer is handed, i.e. the
  ``PolicyWithExtractor`` under MLC), recompute the reference values with the sharded model,
  and train the same steps, each rank on its half of every global batch (FSDP2 averages the
  gradients in its reduce-scatter).

After the first step both runs also evaluate the second batch the way ``prediction_step`` does
(no grad, then :func:`reshard_after_scoring`). Rank 0 writes the per-step losses of both runs
(the sharded run's loss is the mean of the two ranks' losses), the largest parameter difference
(sharded parameters gathered), how far training moved the weights, and the largest
reference-value difference.
The probe records the pre-fix failure mode on a freshly sharded model (``root`` layout).
``layout: zero3`` cases run :func:`run_zero3_case` instead (needs deepspeed, ``DS_ACCELERATOR=cpu``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from polyalign.data.collate import Collator
from polyalign.training.config import load_config
from polyalign.training.datasets import load_training_data
from polyalign.training.forward import model_hidden_states, reshard_after_scoring
from polyalign.training.mlc_policy import MLCCollator, wrap_policy
from polyalign.training.objective import compute_objective
from polyalign.training.reference_cache import attach_values, compute_reference_values, needs_reference
from polyalign.training.run import load_policy

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny_cpu_mpo.yaml"


def _setup(settings: dict) -> tuple:
    """``(config, model, dataset, collator, pad_token_id)`` exactly as ``run.train`` builds them."""
    config = load_config(RECIPE, settings)
    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(config)
    dataset, report = load_training_data(config, tokenizer, config.train_file, config.train_format,
                                         limit=config.max_examples)
    pad = tokenizer.pad_token_id
    collator = Collator(config.method, pad)
    if config.mlc_enabled:
        model = wrap_policy(model, config)
        collator = MLCCollator(collator, pad, report.variants.languages)
    return config, model, dataset, collator, pad


def _reference(config, model, dataset, pad) -> dict[str, torch.Tensor]:
    """The reference values as ``run.train`` computes them (a sharded MLC model: through its root)."""
    return compute_reference_values(model, dataset, config.method, pad_token_id=pad, batch_size=8,
                                    pooling=config.retain_pooling, chunk_size=config.logps_chunk_size)


def _shard(model: torch.nn.Module, world: int, layout: str) -> torch.nn.Module:
    """Shard ``model`` in place with FSDP2.

    ``accelerate``: accelerate's own ``fsdp2_prepare_model`` (what the Trainer runs under an
    FSDP2 plugin: one unit per decoder layer, the input embeddings, a ``[final norm, LM head]``
    group that does not reshard after forward, then the root), given a stand-in for the
    Accelerator because accelerate 1.15 will not select FSDP on CPU. ``root``: ``fully_shard``
    per decoder layer, then the root holding the embeddings, norm and head (and an MLC
    extractor), each with an explicit ``reshard_after_forward=True``, so the root reshards after
    its forward too.
    """
    policy = getattr(model, "policy", model)
    layer_type = type(policy.model.layers[0])
    if layout == "accelerate":
        from accelerate.utils import FullyShardedDataParallelPlugin
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        plugin = FullyShardedDataParallelPlugin(fsdp_version=2, auto_wrap_policy="transformer_based_wrap",
                                                transformer_cls_names_to_wrap=[layer_type.__name__],
                                                reshard_after_forward=True)
        accelerator = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None,
                                      mixed_precision="no", is_main_process=dist.get_rank() == 0)
        return fsdp2_prepare_model(accelerator, model)
    mesh = init_device_mesh("cpu", (world,))
    for module in list(model.modules()):
        if isinstance(module, layer_type):
            fully_shard(module, mesh=mesh, reshard_after_forward=True)
    fully_shard(model, mesh=mesh, reshard_after_forward=True)
    return model


_DS_CONFIG = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "steps_per_print": 10**9,
              "zero_allow_untested_optimizer": True,
              # threshold 0: every parameter is partitioned, the LM head and the extractor too
              "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0}}


def run_zero3_case(case: dict, rank: int, world: int) -> dict:
    """DeepSpeed ZeRO-3 (CPU accelerator, gloo): one step's loss and full gradients against one
    process, plus reference values and a no-grad evaluation through partitioned models.

    Gradients, not trained weights: DeepSpeed's own optimizer step on CPU diverged from torch's
    (a plain ``model(labels=...)`` loss too, ZeRO-2 as well), so weights after several steps
    would test DeepSpeed, not polyalign. ZeRO-3 and ZeRO-2 gave identical trained weights.
    """
    import deepspeed
    from deepspeed.utils import safe_get_full_grad

    deepspeed.init_distributed(dist_backend="gloo")  # adopts the torch.distributed group
    settings = case["settings"]
    config, model, dataset, collator, pad = _setup(settings)
    ref = _reference(config, model, dataset, pad) if needs_reference(config.method) else {}
    if ref:
        attach_values(dataset, dataset.ids, ref, config.method)
    rows = list(range(int(case["global_batch"])))
    half = len(rows) // world
    result: dict = {}
    if rank == 0:
        model.train()
        out = compute_objective(model, collator([dataset[i] for i in rows]), config, pad, apply_mlc=True)
        out.loss.backward()
        single = {name: p.grad.detach().double() for name, p in model.named_parameters()}
        result["single_loss"] = float(out.loss)
    ds_config = {**_DS_CONFIG, "train_batch_size": world}
    # Partitioned without an engine (no gathering hooks): what the reference pass gets when
    # transformers loads the policy under deepspeed.zero.Init.
    _, bare, _, _, _ = _setup(settings)
    deepspeed.zero.Init(module=bare, config_dict_or_path=ds_config)
    result["head_partitioned"] = bare.get_output_embeddings().weight.numel() == 0
    if ref:
        partitioned_ref = _reference(config, bare, dataset, pad)
        result["reference_max_diff"] = max(float((partitioned_ref[k] - ref[k]).abs().max()) for k in ref)
    _, model, _, _, _ = _setup(settings)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=ds_config)
    local = collator([dataset[i] for i in rows[rank * half:(rank + 1) * half]])
    engine.eval()
    with torch.no_grad():
        eval_loss = float(compute_objective(engine, local, config, pad, apply_mlc=True).loss)
    engine.train()
    out = compute_objective(engine, local, config, pad, apply_mlc=True)
    engine.backward(out.loss)
    losses = torch.tensor([float(out.loss.detach()), eval_loss], dtype=torch.float64)
    dist.all_reduce(losses)
    grads = {name: safe_get_full_grad(p) for name, p in engine.module.named_parameters()}  # collective
    if rank == 0:
        result["zero3_loss"], result["zero3_eval_loss"] = (losses / world).tolist()
        assert grads.keys() == single.keys()
        result["grad_max_rel_diff"] = max(float((grads[k].double() - single[k]).abs().max() / single[k].abs().max())
                                          for k in single)
        result["n_params"] = len(grads)
    return result


def _train(config, model, batches, pad) -> tuple[list[float], float]:
    """``max_steps`` AdamW steps (the Trainer's ``adamw_torch`` with weight_decay 0: one group)
    and, after the first step, an evaluation of the second batch as ``prediction_step`` runs it
    (eval mode, no grad, then :func:`reshard_after_scoring`). Returns the losses and the eval loss.
    """
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.learning_rate, weight_decay=0.0)
    losses, eval_loss = [], float("nan")
    for step, batch in enumerate(batches):
        model.train()
        out = compute_objective(model, batch, config, pad, apply_mlc=True)
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(out.loss.detach()))
        if step == 0 and len(batches) > 1:
            model.eval()
            with torch.no_grad():
                eval_loss = float(compute_objective(model, batches[1], config, pad, apply_mlc=True).loss)
            reshard_after_scoring(model)
    return losses, eval_loss


def _params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Full parameters (collective when sharded: every rank calls ``full_tensor``)."""
    return {name: (p.full_tensor() if isinstance(p, DTensor) else p).detach().double().clone()
            for name, p in model.named_parameters()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), sorted(set(a) ^ set(b))
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def run_case(case: dict, rank: int, world: int) -> dict:
    settings = case["settings"]
    config, model, dataset, collator, pad = _setup(settings)
    steps, batch = int(config.max_steps), int(case["global_batch"])
    order = [[(step * batch + j) % len(dataset) for j in range(batch)] for step in range(steps)]
    ref = _reference(config, model, dataset, pad) if needs_reference(config.method) else {}
    if ref:
        attach_values(dataset, dataset.ids, ref, config.method)
    result: dict = {}
    if rank == 0:
        initial = _params(model)
        batches = [collator([dataset[i] for i in rows]) for rows in order]
        result["single_losses"], result["single_eval_loss"] = _train(config, model, batches, pad)
        single = _params(model)
        result["moved"] = _max_diff(single, initial)
    config, model, _, _, _ = _setup(settings)  # a fresh copy of the same initial model, then sharded
    model = _shard(model, world, case.get("layout", "accelerate"))
    result["units"] = sorted(name for name, m in model.named_modules() if isinstance(m, FSDPModule))
    if ref:
        sharded_ref = _reference(config, model, dataset, pad)
        result["reference_max_diff"] = max(float((sharded_ref[k] - ref[k]).abs().max()) for k in ref)
    half = batch // world
    local = [collator([dataset[i] for i in rows[rank * half:(rank + 1) * half]]) for rows in order]
    losses, eval_loss = _train(config, model, local, pad)
    losses = torch.tensor([*losses, eval_loss], dtype=torch.float64)
    dist.all_reduce(losses)  # the global batch's loss is the mean of the two halves' mean losses
    gathered = _params(model)  # collective: every rank gathers
    if rank == 0:
        result["fsdp_losses"] = (losses[:-1] / world).tolist()
        result["fsdp_eval_loss"] = float(losses[-1] / world)
        result["max_param_diff"] = _max_diff(gathered, single)
        result["n_params"] = len(gathered)
        result["extractor_params"] = sorted(k for k in gathered if k.startswith("mlc_extractor."))
    return result


def run_probe(probe: dict, world: int) -> dict:
    """The pre-fix failure mode: the sharded root's head is a DTensor outside forward, calling the
    decoder directly fails, and a root forward with ``reshard_after_forward=True`` reshards it again."""
    _, model, dataset, collator, _ = _setup(probe["settings"])
    model = _shard(model, world, "root")
    head = model.get_output_embeddings()
    batch = collator([dataset[0], dataset[1]])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = {"head_dtensor_before": isinstance(head.weight, DTensor)}
    try:
        model.model(input_ids=ids, attention_mask=mask)
        out["decoder_direct_error"] = None
    except Exception as exc:  # noqa: BLE001 - the message is what the test checks
        out["decoder_direct_error"] = f"{type(exc).__name__}: {exc}"[:300]
    with torch.no_grad():
        model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
        out["head_dtensor_after_plain_root_forward"] = isinstance(head.weight, DTensor)
        model_hidden_states(model, ids, mask)
        out["head_dtensor_after_model_hidden_states"] = isinstance(head.weight, DTensor)
        reshard_after_scoring(model)
        out["head_dtensor_after_reshard_after_scoring"] = isinstance(head.weight, DTensor)
    return out


def main() -> None:
    spec = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    results = {case["name"]: (run_zero3_case if case.get("layout") == "zero3" else run_case)(case, rank, world)
               for case in spec["cases"]}
    if "probe" in spec:
        results["probe"] = run_probe(spec["probe"], world)
    if rank == 0:
        Path(sys.argv[2]).write_text(json.dumps(results, indent=1))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
