"""Pretrain (and cache) the world's base model: a tiny Llama from the project's factory.

The cache folder is ``out_dir/base-<key>`` where ``key`` hashes the world's key (its config,
seed and generated content), the pretraining config, :data:`CACHE_VERSION` and what this
process's float results depend on (:func:`polyalign.toyworld.numerics.numerics_key`: torch
version, ATen kernels, MKL branch); it holds ``model.safetensors``,
the model config, the tokenizer files (``chat_template.jinja`` included) and
``toyworld.json`` (the key, both configs, the world seed, the training time and the loss
curve). A folder with a matching ``toyworld.json`` is reused without training; a folder is
only ever published complete (written under a temporary name, then renamed).

Determinism: the model is built with ``seed``, ``torch.manual_seed(seed)`` is set before
training, the data order comes from ``numpy.random.default_rng(seed)``, and the thread
count is fixed by the config (float reductions depend on it), so a seed reproduces the
same weights wherever :func:`~polyalign.toyworld.numerics.numerics_key` is the same (the demo
pins it in its worker processes, see :mod:`polyalign.toyworld.numerics`).
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from polyalign.errors import UserError
from polyalign.io import atomic_write_json, text_fingerprint
from polyalign.models import build_tiny_model, load_model_and_tokenizer
from polyalign.toyworld.corpus import Corpus, MixtureConfig
from polyalign.toyworld.numerics import numerics, numerics_key
from polyalign.toyworld.tokenizer import build_word_tokenizer
from polyalign.toyworld.world import World

# v2: the key includes the numerics (v1 models were trained under whatever kernels the host chose).
CACHE_VERSION = "toyworld-pretrain-v2"
META_FILE = "toyworld.json"


@dataclass(frozen=True)
class PretrainConfig:
    """Model size and optimisation of the base model (defaults fit the demo budget).

    Learning rate: linear warmup over ``warmup_steps`` to ``lr``, then cosine decay to 0 at
    ``steps``: ``lr_t = lr * t / warmup`` for ``t < warmup``, else
    ``lr * 0.5 * (1 + cos(pi * (t - warmup) / (steps - warmup)))``.
    """

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    steps: int = 1200
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    num_threads: int = 1
    length_buckets: int = 2
    mixture: MixtureConfig = field(default_factory=MixtureConfig)

    def __post_init__(self) -> None:
        if self.steps < 1 or self.batch_size < 1 or not 0 <= self.warmup_steps < self.steps:
            raise UserError("need steps >= 1, batch_size >= 1 and 0 <= warmup_steps < steps", field="pretrain")
        if self.num_threads < 1 or self.length_buckets < 1:
            raise UserError("num_threads and length_buckets must be >= 1", field="pretrain")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["mixture"] = self.mixture.to_dict()
        return out


def cache_key(world: World, config: PretrainConfig) -> str:
    """Hash of everything that determines the base model's weights, this process's numerics included."""
    return text_fingerprint(CACHE_VERSION, world.key, config.to_dict(), numerics_key())


def lr_factor(step: int, config: PretrainConfig) -> float:
    """Multiplier of ``config.lr`` at optimiser step ``step`` (0-based); see the class doc."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def collate(sequences: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad token id lists; ``labels`` are the ids with padding set to -100."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _accumulate(model: PreTrainedModel, sequences: list[list[int]], pad_id: int, buckets: int) -> torch.Tensor:
    """Backpropagate the batch's mean next-token loss; return it (detached).

    The batch is sorted by length and split into ``buckets`` micro-batches, each padded
    only to its own longest sequence (sequence lengths vary 3-5x, so one padded batch
    wastes ~45% of the compute). The loss is ``sum_i CE_i / N`` over all ``N`` predicted
    tokens of the whole batch, so the gradient equals the single-batch one.
    """
    order = sorted(sequences, key=len)
    n_tokens = sum(len(s) - 1 for s in order)
    size = -(-len(order) // buckets)
    total = torch.zeros(())
    for start in range(0, len(order), size):
        batch = collate(order[start : start + size], pad_id)
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]).float(), batch["labels"][:, 1:].reshape(-1),
            ignore_index=-100, reduction="sum",
        ) / n_tokens
        loss.backward()
        total += loss.detach()
    return total


def _train_model(
    world: World, tokenizer: PreTrainedTokenizerBase, config: PretrainConfig, log_every: int = 50,
    progress: Callable[[int], None] | None = None,
) -> tuple[PreTrainedModel, list[tuple[int, float]]]:
    """Train a fresh tiny Llama on the world's mixture; returns the model and its loss curve.

    ``progress(steps_done)`` is called after every optimiser step (progress bars)."""
    corpus = Corpus(world, tokenizer, config.mixture)
    model = build_tiny_model(
        "llama", tokenizer, hidden_size=config.hidden_size, num_layers=config.num_layers,
        num_heads=config.num_heads, intermediate_size=config.intermediate_size, seed=config.seed,
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config))
    rng = np.random.default_rng(config.seed)
    curve: list[tuple[int, float]] = []
    running = 0.0
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(config.num_threads)
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):  # seed training without touching the caller's RNG
            torch.manual_seed(config.seed)
            for step in range(config.steps):
                sequences = [ids for _, _, ids in corpus.sample(rng, config.batch_size)]
                optimizer.zero_grad(set_to_none=True)
                loss = _accumulate(model, sequences, tokenizer.pad_token_id, config.length_buckets)
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                running += float(loss)
                if (step + 1) % log_every == 0 or step + 1 == config.steps:
                    curve.append((step + 1, running / ((step % log_every) + 1)))
                    running = 0.0
                if progress is not None:
                    progress(step + 1)
    finally:
        torch.set_num_threads(previous_threads)
    return model.eval(), curve


def cached_model_dir(world: World, out_dir: str | Path, config: PretrainConfig) -> Path:
    """Where :func:`pretrain_base_model` keeps the model for this world and config."""
    return Path(out_dir) / f"base-{cache_key(world, config)}"


def _valid_cache(folder: Path, key: str) -> bool:
    meta = folder / META_FILE
    if not (meta.is_file() and (folder / "model.safetensors").is_file()):
        return False
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def pretrain_base_model(world: World, out_dir: str | Path, config: PretrainConfig | None = None, *,
                        progress: Callable[[int], None] | None = None) -> Path:
    """Train the base model for ``world`` (or reuse the cached one) and return its folder.

    The folder loads with :func:`polyalign.models.load_model_and_tokenizer`; ``progress``
    is called with the number of steps done after each pretraining step (not when cached).
    """
    config = config or PretrainConfig()
    key = cache_key(world, config)
    folder = cached_model_dir(world, out_dir, config)
    if _valid_cache(folder, key):
        return folder
    if folder.exists():
        # A folder with this name but a foreign or missing key is not ours to reuse.
        raise UserError("folder exists but is not a complete cached base model for this world; remove it",
                        file=folder)
    tokenizer = build_word_tokenizer(world.lexicon.surface_vocab())
    start, cpu_start = time.perf_counter(), time.process_time()
    model, curve = _train_model(world, tokenizer, config, log_every=max(1, min(50, config.steps // 10)),
                                progress=progress)
    # CPU seconds stay meaningful on a shared, loaded machine where wall time does not.
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    atomic_write_json(tmp / META_FILE, {
        "key": key, "cache_version": CACHE_VERSION, "world_seed": world.seed, "world_key": world.key,
        "world_config": world.config.to_dict(), "pretrain_config": config.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()), "train_seconds": round(seconds, 2),
        "train_cpu_seconds": round(cpu_seconds, 2), "threads": config.num_threads, "numerics": numerics(),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),  # Linux: KiB
        "loss_curve": curve,
    })
    tmp.rename(folder)
    return folder


def load_base_model(folder: str | Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Load a cached base model folder: ``(model, tokenizer, toyworld.json contents)``."""
    model, tokenizer = load_model_and_tokenizer(folder)
    meta_path = Path(folder) / META_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read the toy-world metadata: {exc}", file=meta_path) from None
    return model, tokenizer, meta
