"""Response generation: settings, prompt rendering, the Hugging Face and vLLM backends.

Work unit: one ``(prompt id, sample index)``. Units are sorted by prompt length (longest
first) and cut into batches, so padding is small; every finished batch goes to the store.

Hugging Face backend: left padding, ``model.generate(use_cache=True)`` (KV cache),
decoding strips the prompt and special tokens. Greedy when ``temperature == 0``.

Determinism (HF backend). Greedy: the output depends only on the prompt (left padding
with a correct attention mask and position ids; with eager attention batched and
one-at-a-time outputs are the same up to float rounding). Sampling: each row draws its
random numbers from its own ``torch.Generator`` seeded with
``row_seed(seed, id, sample) = int(sha256(f"{seed}:{id}:{sample}")[:16], 16) mod 2**63``,
one uniform ``u_t`` per new token, and picks by inverse CDF over the temperature-scaled,
top-p-filtered distribution (nucleus: the most likely tokens whose preceding mass is
``< top_p``). So a sample does not depend on which other rows share its batch, nor on the
batch size, nor on run order (given equal logits; rounding differences between batch
shapes could flip a draw only when ``u_t`` falls within ~1e-7 of a CDF boundary).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that changes what is generated (and so goes into the store fingerprint).

    ``temperature == 0`` means greedy decoding. ``chat_template`` renders the prompt as one
    user turn (plus ``system_prompt``) with the generation prompt; otherwise the prompt text
    is continued as is (the toxicity protocol). Batch size is not a setting: it does not
    change the outputs (see the module docstring).
    """

    max_new_tokens: int = 256
    num_samples: int = 1
    temperature: float = 0.0
    top_p: float = 1.0
    chat_template: bool = True
    system_prompt: str | None = None
    seed: int = 0
    repetition_penalty: float = 1.0

    @property
    def do_sample(self) -> bool:
        return self.temperature > 0

    def validate(self) -> "GenerationSettings":
        if self.max_new_tokens < 1:
            raise UserError(f"must be at least 1, got {self.max_new_tokens}", field="max_new_tokens")
        if self.num_samples < 1:
            raise UserError(f"must be at least 1, got {self.num_samples}", field="num_samples")
        if self.temperature < 0:
            raise UserError(f"must be >= 0 (0 = greedy), got {self.temperature}", field="temperature")
        if not 0 < self.top_p <= 1:
            raise UserError(f"must be in (0, 1], got {self.top_p}", field="top_p")
        if self.num_samples > 1 and not self.do_sample:
            raise UserError("several samples per prompt need sampling: set a temperature > 0", field="num_samples")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenerationTask:
    """One unit of work: a prompt, a sample index and the exact text given to the model."""

    prompt: EvalPrompt
    sample: int
    rendered: str
    input_ids: tuple[int, ...]

    @property
    def key(self) -> tuple[str, int]:
        return (self.prompt.id, self.sample)


def row_seed(seed: int, item_id: str, sample: int) -> int:
    """Seed of one row's random stream: ``int(sha256(f"{seed}:{id}:{sample}")[:16], 16) mod 2**63``."""
    return int(hashlib.sha256(f"{seed}:{item_id}:{sample}".encode()).hexdigest()[:16], 16) % (2**63)


def prompt_sha(rendered: str) -> str:
    """Short hash of the rendered prompt, stored with each generation to detect changed data."""
    return hashlib.sha256(rendered.encode("utf-8")).hexdigest()[:16]


def render_prompt(tokenizer: Any, text: str, settings: GenerationSettings) -> tuple[str, list[int]]:
    """The text given to the model and its token ids.

    Chat mode: ``apply_chat_template([system?, user], add_generation_prompt=True)``,
    tokenised without adding special tokens again (the template writes them). Raw mode:
    the text itself, tokenised with the tokenizer's own special tokens (e.g. BOS).
    """
    if settings.chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise UserError("the tokenizer has no chat template; use --no-chat-template to continue raw text", field="chat_template")
        messages = ([{"role": "system", "content": settings.system_prompt}] if settings.system_prompt else [])
        messages.append({"role": "user", "content": text})
        try:
            rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # jinja errors, e.g. a template that rejects the system role
            raise UserError(f"the chat template failed: {exc}", field="chat_template") from None
        ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
    else:
        rendered = text
        ids = tokenizer(rendered, add_special_tokens=True)["input_ids"]
    if not ids:
        raise UserError("prompt encodes to zero tokens", field="text")
    return rendered, list(ids)


def make_tasks(tokenizer: Any, prompts: Sequence[EvalPrompt], settings: GenerationSettings) -> list[GenerationTask]:
    """One task per (prompt, sample index), in prompt order."""
    tasks = []
    for prompt in prompts:
        rendered, ids = render_prompt(tokenizer, prompt.text, settings)
        tasks.extend(GenerationTask(prompt, s, rendered, tuple(ids)) for s in range(settings.num_samples))
    return tasks


def make_batches(tasks: Sequence[GenerationTask], batch_size: int) -> list[list[GenerationTask]]:
    """Sort by prompt length (longest first, ties by key: deterministic) and chunk."""
    if batch_size < 1:
        raise UserError(f"must be at least 1, got {batch_size}", field="batch_size")
    ordered = sorted(tasks, key=lambda t: (-len(t.input_ids), t.prompt.id, t.sample))
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


class SeededSampler(LogitsProcessor):
    """Samples each row from its own random stream; returns scores that make greedy pick it.

    ``uniforms[b, t]`` is row ``b``'s draw for new token ``t``. The returned scores are 0
    for the chosen token and -inf elsewhere, so ``generate`` in greedy mode selects it.
    """

    def __init__(self, uniforms: torch.Tensor, start_len: int, temperature: float, top_p: float) -> None:
        self.uniforms, self.start_len = uniforms, start_len
        self.temperature, self.top_p = temperature, top_p

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        step = input_ids.shape[1] - self.start_len
        u = self.uniforms[:, step].to(torch.float64).to(scores.device)
        probs = torch.softmax(scores.to(torch.float64) / self.temperature, dim=-1)
        sorted_p, order = probs.sort(dim=-1, descending=True, stable=True)
        before = sorted_p.cumsum(-1) - sorted_p  # mass of strictly more likely tokens
        kept = torch.where(before < self.top_p, sorted_p, torch.zeros_like(sorted_p))
        cdf = (kept / kept.sum(-1, keepdim=True)).cumsum(-1)
        n_kept = (kept > 0).sum(-1, keepdim=True)
        pick = torch.searchsorted(cdf, u.unsqueeze(-1).contiguous(), right=True).clamp(max=n_kept - 1)
        token = order.gather(-1, pick)
        out = torch.full_like(scores, float("-inf"))
        return out.scatter_(-1, token, 0.0)


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (configured, tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


class HFGenerator:
    """Batched generation with a ``transformers`` causal LM (see the module docstring)."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, settings: GenerationSettings, *, batch_size: int = 8) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings.validate()
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            raise UserError("the tokenizer has no pad token (load it with polyalign.models.load_model_and_tokenizer)", field="pad_token")
        self.eos_ids = _eos_ids(model, tokenizer)
        if not self.eos_ids:
            raise UserError("the model has no eos token: generation could not stop", field="eos_token_id")

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate_batch(self, tasks: Sequence[GenerationTask]) -> list[dict[str, Any]]:
        """Generate one batch; returns one record per task (``id, sample, language, text, ...``)."""
        width = max(len(t.input_ids) for t in tasks)
        pad = self.tokenizer.pad_token_id
        # Left padding: every prompt ends at the same position, where generation starts.
        input_ids = torch.full((len(tasks), width), pad, dtype=torch.long)
        attention = torch.zeros((len(tasks), width), dtype=torch.long)
        for row, task in enumerate(tasks):
            input_ids[row, width - len(task.input_ids) :] = torch.tensor(task.input_ids)
            attention[row, width - len(task.input_ids) :] = 1
        s = self.settings
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            repetition_penalty=s.repetition_penalty, pad_token_id=pad, eos_token_id=sorted(self.eos_ids),
        )
        processors = LogitsProcessorList()
        seeds = [row_seed(s.seed, t.prompt.id, t.sample) for t in tasks] if s.do_sample else []
        if s.do_sample:
            uniforms = torch.stack([torch.rand(s.max_new_tokens, generator=torch.Generator().manual_seed(x), dtype=torch.float64) for x in seeds])
            processors.append(SeededSampler(uniforms, width, s.temperature, s.top_p))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                generation_config=config, logits_processor=processors,
            )
        records = []
        for row, task in enumerate(tasks):
            new = out[row, width:].tolist()
            stop = next((i for i, tok in enumerate(new) if tok in self.eos_ids), None)
            kept = new if stop is None else new[: stop + 1]
            records.append({
                "id": task.prompt.id, "sample": task.sample, "language": task.prompt.language,
                "text": self.tokenizer.decode(kept, skip_special_tokens=True),
                "n_tokens": len(kept), "finish_reason": "length" if stop is None else "stop",
                "prompt_sha": prompt_sha(task.rendered), **({"seed": seeds[row]} if seeds else {}),
            })
        return records


def _adapter_rank(adapter: str) -> int | None:
    """The LoRA rank ``r`` in a PEFT adapter's ``adapter_config.json`` (None when unreadable)."""
    try:
        return int(json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class VLLMGenerator:
    """Generation with vLLM (optional dependency, imported here only).

    Per-request seeds (``row_seed``) make each sample independent of batch composition.
    Prompts are passed as token ids rendered exactly like the HF backend's.
    """

    name = "vllm"

    def __init__(self, model_path: str, settings: GenerationSettings, *, batch_size: int = 256, adapter: str | None = None,
                 trust_remote_code: bool = False, **engine_options: Any) -> None:
        try:
            import vllm  # noqa: PLC0415 - optional, heavy
        except ImportError:
            raise UserError("the vLLM backend needs the 'vllm' package (pip install vllm); or use --backend hf", field="backend") from None
        self._vllm = vllm
        self.settings = settings.validate()
        self.batch_size = batch_size
        if adapter is not None:
            # vLLM preallocates LoRA slots of max_lora_rank (default 16): size them to the adapter.
            engine_options.setdefault("enable_lora", True)
            rank = _adapter_rank(adapter)
            if rank is not None:
                engine_options.setdefault("max_lora_rank", rank)
        self.llm = vllm.LLM(model=str(model_path), trust_remote_code=trust_remote_code, **engine_options)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest  # noqa: PLC0415

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def generate_batch(self, tasks: Sequence[GenerationTask]) -> list[dict[str, Any]]:
        s = self.settings
        params = [
            self._vllm.SamplingParams(
                max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p, repetition_penalty=s.repetition_penalty,
                seed=row_seed(s.seed, t.prompt.id, t.sample) if s.do_sample else None, skip_special_tokens=True,
            )
            for t in tasks
        ]
        prompts = [{"prompt_token_ids": list(t.input_ids)} for t in tasks]
        outputs = self.llm.generate(prompts, params, use_tqdm=False, lora_request=self.lora)
        return [
            {"id": t.prompt.id, "sample": t.sample, "language": t.prompt.language, "text": o.outputs[0].text,
             "n_tokens": len(o.outputs[0].token_ids), "finish_reason": o.outputs[0].finish_reason or "stop",
             "prompt_sha": prompt_sha(t.rendered), **({"seed": p.seed} if s.do_sample else {})}
            for t, o, p in zip(tasks, outputs, params, strict=True)
        ]


def run_generation(
    generator: HFGenerator | VLLMGenerator,
    tasks: Sequence[GenerationTask],
    store: Any,
    *,
    progress: bool = True,
    batch_delay: float = 0.0,
    on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
) -> dict[str, int]:
    """Generate every task not already in ``store``; append each batch as it finishes.

    A stored record whose ``prompt_sha`` differs from the task's rendered prompt means the
    data or template changed under the same ids: a :class:`UserError`, not silent reuse.
    Returns ``{"total", "reused", "generated"}``. ``batch_delay`` sleeps after each batch
    (throttling; the resume test uses it to kill a run midway).
    """
    from tqdm import tqdm

    pending = []
    for task in tasks:
        stored = store.get(task.key)
        if stored is None:
            pending.append(task)
        elif stored.get("prompt_sha") != prompt_sha(task.rendered):
            raise UserError(f"prompt {task.prompt.id!r} differs from the one its stored generation answered "
                            "(data or chat template changed); use another output folder", file=store.path, field="prompt_sha")
    reused = len(tasks) - len(pending)
    bar = tqdm(total=len(tasks), initial=reused, desc="generating", unit="gen", disable=not progress, dynamic_ncols=True)
    generated = 0
    try:
        for batch in make_batches(pending, generator.batch_size):
            records = generator.generate_batch(batch)
            generated += store.append(records)
            if on_batch is not None:
                on_batch(records)
            bar.update(len(batch))
            if batch_delay > 0:
                time.sleep(batch_delay)
    finally:
        bar.close()
    return {"total": len(tasks), "reused": reused, "generated": generated}
