"""Response generation: settings, prompt rendering, the Hugging Face backend (vLLM:
:mod:`polyalign.evaluation.generation_vllm`).

Work unit: one ``(prompt id, sample index)``. Units are sorted by prompt length (longest
first) and cut into batches, so padding is small; every finished batch goes to the store.

Hugging Face backend: left padding, ``model.generate(use_cache=True)`` (KV cache),
decoding strips the prompt and special tokens. Greedy when ``temperature == 0``. Speed
(decoder-only models with full-attention and sliding-window cache layers: Llama, Qwen-2, Gemma-2/3):

- the prompts are prefilled in *groups* of similar length rather than as one padded batch
  (:func:`prefill_groups`: consecutive rows of the length-sorted batch, chosen to minimise
  ``sum(overhead + rows * longest)`` token-equivalents), so a wide batch pays for almost no
  padding tokens in the prefill, which is compute bound; the keys/values are copied
  right-aligned into one left-padded batch cache and ``generate`` decodes the whole batch;
- that cache is a ``StaticCache`` (preallocated ``prompt width + max_new_tokens``): a growing
  ``DynamicCache`` re-copies every layer's keys and values at each new token (``torch.cat``,
  a third of a decode step at batch 16 on CPU). ``disable_compile`` keeps ``generate`` from
  compiling a new graph for each batch shape on GPUs.

Models with sliding-window layers (Gemma-2, Gemma-3's 5 sliding : 1 global) take the same path
for a batch whose whole cache (prompt width + ``max_new_tokens``) fits the window: a static
sliding layer that never fills keeps every position, exactly as a full-attention layer, and the
window masks nothing. A batch longer than the window (and encoder-decoders) take the plain path:
one padded prefill inside ``generate`` with the model's own hybrid cache.

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
import inspect
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from transformers import DynamicCache, GenerationConfig, LogitsProcessor, LogitsProcessorList, StaticCache
from transformers.cache_utils import StaticLayer, StaticSlidingWindowLayer

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

    def validate(self) -> GenerationSettings:
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
            raise UserError("the tokenizer has no chat template; use --no-chat-template to continue raw text",
                            field="chat_template")
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


def prefill_groups(lengths: Sequence[int], overhead: int) -> list[list[int]]:
    """Rows (indices into ``lengths``) grouped for prefill, minimising padded work.

    A group of ``n`` rows whose longest has ``m`` tokens costs ``overhead + n * m``
    token-equivalents (``overhead``: the fixed cost of one forward, e.g. reading the weights).
    Rows sorted longest first are cut into consecutive runs by dynamic programming over the
    cut points (exact for this cost, ``O(n^2)``). Rows of length 0 need no prefill: left out.
    """
    order = sorted((i for i, n in enumerate(lengths) if n > 0), key=lambda i: (-lengths[i], i))
    best, cut = [0] + [0] * len(order), [0] * (len(order) + 1)
    for end in range(1, len(order) + 1):
        # The group order[start:end] is as long as its first (longest) row.
        best[end], cut[end] = min((best[start] + overhead + (end - start) * lengths[order[start]], start)
                                  for start in range(end))
    groups, end = [], len(order)
    while end > 0:
        groups.append(order[cut[end] : end])
        end = cut[end]
    return groups[::-1]


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


#: Rows decoded together by default. A decode step reads all weights once whatever the batch,
#: so wider batches amortise it (CPU, 58M Llama, 2 threads: 12.5 ms per step at 1 row, 42 ms at
#: 32); grouped prefill keeps wide batches from paying for padding. KV memory per row is
#: ``2 * layers * kv_heads * head_dim * (prompt + max_new_tokens)`` values.
DEFAULT_BATCH_SIZE = 32


def _static_cache_window(model: Any) -> tuple[bool, int | None]:
    """``(grouped prefill possible, smallest sliding window or None)`` from the model's static cache layers.

    Possible when every layer is a full-attention ``StaticLayer`` or a ``StaticSlidingWindowLayer``
    (the latter only for batches that fit its window, see the module docstring).
    """
    config = getattr(model, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False) or not hasattr(config, "get_text_config"):
        return False, None
    # Layers allocate lazily: a huge max_cache_len costs nothing and leaves each sliding layer at its window.
    layers = StaticCache(config=config, max_cache_len=2**30).layers
    if not all(type(layer) in (StaticLayer, StaticSlidingWindowLayer) for layer in layers):
        return False, None
    windows = [layer.max_cache_len for layer in layers if type(layer) is StaticSlidingWindowLayer]
    return True, min(windows) if windows else None


class HFGenerator:
    """Batched generation with a ``transformers`` causal LM (see the module docstring)."""

    name = "hf"

    def __init__(self, model: Any, tokenizer: Any, settings: GenerationSettings, *,
                 batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.settings = settings.validate()
        self.batch_size = batch_size
        if tokenizer.pad_token_id is None:
            raise UserError("the tokenizer has no pad token (load it with polyalign.models.load_model_and_tokenizer)",
                            field="pad_token")
        self.eos_ids = _eos_ids(model, tokenizer)
        if not self.eos_ids:
            raise UserError("the model has no eos token: generation could not stop", field="eos_token_id")
        #: Grouped prefill + static cache (module docstring); False = one padded prefill in ``generate``.
        #: ``sliding_window``: the model's smallest one (None: none); longer batches take the plain path.
        self.grouped_prefill, self.sliding_window = _static_cache_window(model)
        #: Fixed cost of one prefill forward, in prompt tokens; None: by device (see ``_prefill``).
        self.prefill_overhead: int | None = None
        self._keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _prefill(self, input_ids: torch.Tensor, attention: torch.Tensor, lengths: list[int]) -> StaticCache | None:
        """The batch's cache of every prompt token but the last, filled group by group.

        ``input_ids``/``attention`` are left-padded to width ``W``; the result holds positions
        ``0 .. W-2`` (row ``r``'s tokens right-aligned, padding slots zero and masked), so
        ``generate`` runs only the last prompt column and then decodes. Each group's rows are
        left-padded to the group's own width, with position ids counted from the first real
        token (as ``generate`` counts them); a one-row group is exactly an unpadded prompt.
        """
        width = input_ids.shape[1]
        if width < 2:
            return None
        # Fixed cost of one forward in prompt tokens: ~36 measured on CPU (2 threads, 58M
        # Llama: 12 ms + 0.33 ms/token). On a GPU a forward is mostly fixed cost, so prompts
        # are grouped more coarsely there (512: a guess, not measured here).
        overhead = (self.prefill_overhead if self.prefill_overhead is not None
                    else (32 if self.device.type == "cpu" else 512))
        cache = StaticCache(config=self.model.config, max_cache_len=width + self.settings.max_new_tokens)
        filled = False
        with torch.inference_mode():
            for group in prefill_groups([n - 1 for n in lengths], overhead):
                span = max(lengths[r] for r in group) - 1
                cols = slice(width - 1 - span, width - 1)
                ids, mask = input_ids[group, cols], attention[group, cols]
                extra = {"logits_to_keep": 1} if self._keep_logits else {}
                out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                                 position_ids=(mask.cumsum(-1) - 1).clamp(min=0).to(self.device),
                                 past_key_values=DynamicCache(), use_cache=True, **extra)
                for index, layer in enumerate(out.past_key_values.layers):
                    target = cache.layers[index]
                    if not filled:  # allocate the batch cache, W-1 positions marked filled (zeros, no copy)
                        cache.update(*(t.new_zeros(()).expand(len(lengths), t.shape[1], width - 1, t.shape[-1])
                                       for t in (layer.keys, layer.values)), index)
                    rows = torch.tensor(group, device=layer.keys.device)
                    # Group padding slots hold keys of pad tokens: masked anyway, zeroed for a clean cache.
                    real = mask.to(device=layer.keys.device, dtype=layer.keys.dtype)[:, None, :, None]
                    target.keys[rows, :, cols] = layer.keys * real
                    target.values[rows, :, cols] = layer.values * real
                filled = True
        # Every prompt a single token: nothing cached; generate runs the prompts itself.
        return cache if filled else None

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
        fits = self.sliding_window is None or width + s.max_new_tokens <= self.sliding_window
        grouped = self.grouped_prefill and fits
        cache = self._prefill(input_ids, attention, [len(t.input_ids) for t in tasks]) if grouped else None
        config = GenerationConfig(
            max_new_tokens=s.max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
            repetition_penalty=s.repetition_penalty, pad_token_id=pad, eos_token_id=sorted(self.eos_ids),
            disable_compile=True,
        )
        processors = LogitsProcessorList()
        seeds = [row_seed(s.seed, t.prompt.id, t.sample) for t in tasks] if s.do_sample else []
        if s.do_sample:
            uniforms = torch.stack([torch.rand(s.max_new_tokens, generator=torch.Generator().manual_seed(x),
                                               dtype=torch.float64) for x in seeds])
            processors.append(SeededSampler(uniforms, width, s.temperature, s.top_p))
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device), attention_mask=attention.to(self.device),
                generation_config=config, logits_processor=processors,
                **({"past_key_values": cache} if cache is not None else {}),
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


def run_generation(
    generator: Any,  # HFGenerator or polyalign.evaluation.generation_vllm.VLLMGenerator
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
                            "(data or chat template changed); use another output folder", file=store.path,
                            field="prompt_sha")
    reused = len(tasks) - len(pending)
    bar = tqdm(total=len(tasks), initial=reused, desc="generating", unit="gen", disable=not progress,
               dynamic_ncols=True)
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
