"""One seed of the demo: world -> base model -> DPO, MPO, DPO+MLC -> evaluation and analyses.

:func:`run_seed` writes, under ``seed_dir``:

- ``data/``: the alignment records as canonical JSONL (English DPO pairs, the same pairs
  with prompt variants for MLC, MPO parallel pairs);
- ``train/<method>/final``: each aligned model (the project's trainer, ``train(config)``);
- ``<run>/results.json``, ``reward_gap.json``, ``retrieval.json`` for ``run`` in ``base``
  and the methods (the report's schema, see :mod:`polyalign.report.load`);
- ``timings.json``: wall and CPU seconds per stage.

Evaluation is on the world's held-out ``test`` split only. Reward gaps are measured on the
held-out harmful pairs (refusal preferred over compliance) in every language, for the
evaluated model (``policy_gap``) and for the base model (``reference_gap``, the same
baseline for every method). Retrieval uses the held-out prompts, parallel across languages.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from polyalign.data.writers import write_records
from polyalign.io import atomic_write_json
from polyalign.toyworld.demo_config import DISPLAY, DemoConfig
from polyalign.toyworld.evaluate import evaluate_world
from polyalign.toyworld.numerics import numerics
from polyalign.toyworld.pairs import english_preference_pairs, harmful_pair, mpo_parallel_pairs, prompt_variants
from polyalign.toyworld.pretrain import load_base_model, pretrain_base_model
from polyalign.toyworld.world import World, build_world

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def _noop(stage: str, done: int, total: int) -> None:
    return None


def results_document(world: World, metrics: dict[str, dict[str, float]], *, run: str, seed: int,
                     model_path: str, config: DemoConfig) -> dict[str, Any]:
    """``results.json`` in the report's schema from :func:`evaluate_world` metrics.

    ``per_language[lang]`` holds the world's metrics plus ``accuracy`` (= ``benign_accuracy``,
    for the report's safety-vs-utility figure) and ``n`` (harmful + benign prompts).
    """
    from polyalign.evaluation.metrics import summarize

    per_language = {}
    for lang, m in metrics.items():
        row = dict(m)
        row["accuracy"] = m["benign_accuracy"]
        row["n"] = int(m["n_harmful"] + m["n_benign"])
        per_language[lang] = row
    return {
        "benchmark": "toyworld", "headline": "unsafe_rate",
        "settings": {"benchmark": "toyworld", "judge": "exact-match", "split": "test", "seed": seed,
                     "run": DISPLAY.get(run, run), "demo": config.name},
        "model": {"source": model_path},
        "data": {"world_key": world.key, "languages": world.languages},
        "metrics": {"per_language": per_language, "summary": summarize(per_language)},
        "utility": None,
    }


def heldout_pairs(world: World) -> list[Any]:
    """Held-out harmful pairs (refusal over compliance) in every language."""
    return [harmful_pair(world, item, lang) for lang in world.languages for item in world.harmful_split("test")]


def retrieval_sentences(world: World) -> dict[str, list[str]]:
    """The held-out prompts, one list per language, line ``i`` the same item everywhere."""
    variants = prompt_variants(world, "test")
    return {lang: [v.prompts[lang][-1].content for v in variants] for lang in world.languages}


def analyse(model: Any, tokenizer: Any, world: World, pairs: list[Any], base_gap: dict[str, Any] | None,
            batch_size: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(reward_gap.json, retrieval.json)`` documents for one model."""
    from polyalign.analysis.retrieval import bilingual_retrieval
    from polyalign.analysis.reward_gap import reward_gap

    gap = reward_gap(model, tokenizer, pairs, batch_size=batch_size).per_language
    reference = base_gap or gap
    gap_doc = {"reference": "base model", "pairs": "held-out harmful pairs (refusal vs compliance)",
               "per_language": {lang: {"policy_gap": v["mean_gap"], "reference_gap": reference[lang]["mean_gap"],
                                       "n": v["n"], "positive_share": v["positive_share"]}
                                for lang, v in gap.items()}}
    result = bilingual_retrieval(model, tokenizer, retrieval_sentences(world), pivot=world.dominant,
                                 batch_size=batch_size)
    retrieval_doc = {"analysis": "retrieval", "settings": {"sentences": "held-out prompts"}, "result": result.to_dict()}
    return gap_doc, retrieval_doc


def _train_config(config: DemoConfig, method: str, *, model: Path, train_file: Path, out: Path, seed: int,
                  cache_dir: Path, reference: Path | None = None) -> Any:
    from polyalign.training.config import PolyalignConfig

    a = config.align
    extra: dict[str, Any] = {}
    if method == "dpo_mlc":
        extra = {"mlc_weight": a.mlc_weight, "mlc_layer": a.mlc_layer, "mlc_tau": a.mlc_tau,
                 "mlc_every": a.mlc_every, "mlc_dim": a.mlc_dim}
    return PolyalignConfig(
        output_dir=str(out), method="mpo" if method == "mpo" else "dpo", model_name_or_path=str(model),
        ref_model_name_or_path=str(reference) if reference else None, train_file=str(train_file),
        train_format="canonical", detect_language=False, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
        per_device_eval_batch_size=a.eval_batch_size, learning_rate=a.lr, lr_scheduler_type="linear",
        warmup_steps=0, beta=a.beta, nll_weight=a.nll_weight if method != "mpo" else None, mpo_beta=a.mpo_beta,
        seed=seed, data_seed=seed, bf16=False, use_cpu=True, report_to=[],
        save_strategy="no", logging_steps=max(1, a.steps // 10), disable_tqdm=False, dataloader_num_workers=0,
        reference_cache_dir=str(cache_dir / "reference"), **extra,
    )


class _Clock:
    """Wall and CPU seconds per stage (CPU time stays meaningful on a loaded machine)."""

    def __init__(self) -> None:
        self.stages: dict[str, dict[str, float]] = {}

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        self.stages[name] = {"wall_s": round(time.perf_counter() - wall, 2),
                             "cpu_s": round(time.process_time() - cpu, 2)}
        return out


def write_data(world: World, config: DemoConfig, data_dir: Path, seed: int) -> dict[str, Path]:
    """The alignment records (train split only) as canonical JSONL; returns method -> file."""
    files = {"dpo": data_dir / "english_dpo.jsonl", "dpo_mlc": data_dir / "english_dpo_variants.jsonl",
             "mpo": data_dir / "mpo_parallel.jsonl"}
    write_records(english_preference_pairs(world, seed=seed), files["dpo"])
    write_records(english_preference_pairs(world, seed=seed, with_variants=True), files["dpo_mlc"])
    write_records(mpo_parallel_pairs(world, noise_rate=config.align.mpo_noise_rate, seed=seed), files["mpo"])
    return files


def run_seed(seed: int, seed_dir: str | Path, cache_dir: str | Path, config: DemoConfig,
             progress: Progress = _noop) -> dict[str, Any]:
    """Run every stage for ``seed``; returns ``{"runs": {run: folder}, "timings": ..., "base_cached": bool,
    "numerics": ...}``. The numbers depend on this process's numerics (:mod:`polyalign.toyworld.numerics`):
    :func:`polyalign.toyworld.demo.run_demo` calls it in a pinned worker process."""
    from polyalign.toyworld.demo_progress import quiet_worker

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    with quiet_worker():
        return _run_seed(seed, seed_dir, cache_dir, config, progress)


def _run_seed(seed: int, seed_dir: str | Path, cache_dir: str | Path, config: DemoConfig,
              progress: Progress) -> dict[str, Any]:
    from polyalign.toyworld.demo_progress import install_trainer_progress

    seed_dir, cache_dir = Path(seed_dir), Path(cache_dir)
    config = config.for_seed(seed)
    clock = _Clock()
    world = clock.run("world", lambda: build_world(seed, config.world))
    from polyalign.toyworld.pretrain import cached_model_dir

    base_dir = cached_model_dir(world, cache_dir / "base", config.pretrain)
    cached = base_dir.is_dir()
    progress("pretrain" + (" (cached)" if cached else ""), 0, config.pretrain.steps)
    base_dir = clock.run("pretrain", lambda: pretrain_base_model(
        world, cache_dir / "base", config.pretrain,
        progress=lambda done: progress("pretrain", done, config.pretrain.steps)))
    progress("pretrain", config.pretrain.steps, config.pretrain.steps)
    data = write_data(world, config, seed_dir / "data", seed)
    pairs = heldout_pairs(world)
    bs = config.align.eval_batch_size
    runs: dict[str, Path] = {}

    def evaluate(run: str, folder: Path, base_gap: dict[str, Any] | None) -> dict[str, Any]:
        progress(f"eval {DISPLAY[run]}", 0, 1)
        model, tokenizer, _ = load_base_model(base_dir) if run == "base" else _load(folder)
        metrics = clock.run(f"eval_{run}", lambda: evaluate_world(model, tokenizer, world, "test", batch_size=bs))
        gap_doc, retrieval_doc = clock.run(f"analyses_{run}", lambda: analyse(model, tokenizer, world, pairs,
                                                                                 base_gap, bs))
        out = seed_dir / run
        atomic_write_json(out / "results.json", results_document(world, metrics, run=run, seed=seed,
                                                                  model_path=str(folder), config=config))
        atomic_write_json(out / "reward_gap.json", gap_doc)
        atomic_write_json(out / "retrieval.json", retrieval_doc)
        runs[run] = out
        return gap_doc

    base_gap_doc = evaluate("base", base_dir, None)
    base_gap = {lang: {"mean_gap": v["policy_gap"]} for lang, v in base_gap_doc["per_language"].items()}
    trained: dict[str, Path] = {}
    for method in config.methods:
        start = trained["dpo"] if method == "mpo" else base_dir
        if method == "mpo" and "dpo" not in trained:
            raise ValueError("MPO starts from the DPO checkpoint: list dpo before mpo")
        out = seed_dir / "train" / method
        train_config = _train_config(config, method, model=start, train_file=data[method], out=out, seed=seed,
                                     cache_dir=cache_dir, reference=start if method == "mpo" else None)
        install_trainer_progress(lambda done, total, m=method: progress(f"train {DISPLAY[m]}", done, total))
        from polyalign.training.run import train

        clock.run(f"train_{method}", lambda c=train_config: train(c))
        trained[method] = out / "final"
        evaluate(method, trained[method], base_gap)
    atomic_write_json(seed_dir / "timings.json", {"seed": seed, "base_cached": cached, "stages": clock.stages})
    progress("done", 1, 1)
    return {"seed": seed, "runs": {k: str(v) for k, v in runs.items()}, "timings": clock.stages,
            "base_cached": cached, "base_dir": str(base_dir), "numerics": numerics(),
            "model_sha256": {"base": weights_sha256(base_dir),
                             **{m: weights_sha256(folder) for m, folder in trained.items()}}}


def weights_sha256(folder: Path) -> str:
    """SHA-256 over a saved model's tensors (names, dtypes, shapes and bytes, in name order):
    the most sensitive check that two runs computed the same thing."""
    import hashlib

    from safetensors import safe_open

    digest = hashlib.sha256()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        for name in sorted(handle.keys()):
            tensor = handle.get_tensor(name).contiguous()
            digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _load(folder: Path) -> tuple[Any, Any, dict[str, Any]]:
    from polyalign.models import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(folder)
    return model.eval(), tokenizer, {}
