"""Offline tiny tokenizer and tiny model factory, plus the one model-loading function.

Everything here works without a network: the tokenizer is a byte-level BPE trained in a
fraction of a second on ``polyalign/assets/tiny_corpus.txt`` (self-written sentences in
~30 languages and every script the shared data sets use), and the tiny Llama / Gemma-2 /
Gemma-3 / Qwen-2 models are built from config with random (seeded) weights. Tests, the toy world
and the demo use them in place of real checkpoints.

Tokenizer conventions (chosen so every layer sees the same token sequences):

- byte-level BPE: every byte has a token, so any text is encodable and ``<unk>`` never
  appears; ``decode(encode(text)) == text`` for any UTF-8 text.
- no special token is added automatically: ``tokenizer(text)`` gives the same ids with or
  without ``add_special_tokens`` (like Qwen-2). The chat template writes the role markers.
- chat template: ``<|system|>\\n...<|end|>\\n<|user|>\\n...<|end|>\\n<|assistant|>\\n...<|end|>\\n``;
  ``add_generation_prompt=True`` appends ``<|assistant|>\\n``. The rendering of a prompt with
  the generation prompt is a prefix (as text and as token ids) of the rendering of the
  prompt plus an assistant answer.
- ``eos_token`` is ``<|end|>`` (the end of a turn), so generation stops at the end of an
  answer; ``pad_token`` is ``<pad>``, ``bos_token`` ``<s>``, ``unk_token`` ``<unk>``.
"""

from __future__ import annotations

import functools
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    Gemma2Config,
    Gemma2ForCausalLM,
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from polyalign.errors import UserError

BOS, EOS, PAD, UNK = "<s>", "<|end|>", "<pad>", "<unk>"
ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, *ROLE_TOKENS)  # ids 0..6, in this order

# Whitespace control ({%- -%}) keeps the template readable; newlines that belong to the
# output are written as expressions so the trimming never eats them.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] -%}"
    "{{ raise_exception('unknown chat role: ' ~ message['role']) }}"
    "{%- endif -%}"
    "{{ '<|' ~ message['role'] ~ '|>' ~ '\\n' ~ message['content'] ~ '<|end|>' ~ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|assistant|>' ~ '\\n' }}{%- endif -%}"
)

ARCHITECTURES = ("llama", "gemma2", "gemma3", "qwen2")

#: Tiny Gemma-3's sliding window, in tokens: short, so test prompts (10-60 tokens) cross it
#: and the sliding layers really differ from the global ones.
GEMMA3_SLIDING_WINDOW = 8


def _corpus_lines() -> list[str]:
    """The self-written training sentences (comment lines starting with ``#`` dropped)."""
    text = resources.files("polyalign").joinpath("assets/tiny_corpus.txt").read_text(encoding="utf-8")
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def _train_backend(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE backend. Deterministic: same corpus + size -> same merges."""
    backend = Tokenizer(models.BPE(unk_token=UNK))
    # use_regex keeps GPT-2 style pre-token boundaries, so "\n" after a role marker is its
    # own pre-token and the chat-template prefix property holds at the token level.
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: no <unk> ever
        show_progress=False,
    )
    backend.train_from_iterator(_corpus_lines(), trainer=trainer)
    return backend


def wrap_tokenizer(backend: Tokenizer, **options: Any) -> PreTrainedTokenizerFast:
    """A ``PreTrainedTokenizerFast`` over ``backend`` with the project's conventions.

    Same special tokens (ids 0..6 when the backend puts them first), chat template, eos =
    end of turn and right padding for every tokenizer polyalign builds; ``options`` are
    passed on (e.g. ``clean_up_tokenization_spaces``).
    """
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        additional_special_tokens=list(ROLE_TOKENS),
        padding_side="right",
        model_max_length=1024,
        **options,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@functools.lru_cache(maxsize=8)
def _cached_backend_json(vocab_size: int) -> str:
    return _train_backend(vocab_size).to_str()


def build_tiny_tokenizer(vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """A fresh byte-level BPE tokenizer with special tokens and a chat template.

    ``vocab_size`` is an upper bound: the small corpus may run out of merges first, so use
    ``len(tokenizer)`` for the model's vocabulary. Training is cached per process (the
    returned object is new on each call, so callers may change e.g. ``padding_side``).
    """
    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} (bytes + special tokens)")
    return wrap_tokenizer(Tokenizer.from_str(_cached_backend_json(vocab_size)))


def _config(arch: str, vocab_size: int, tokenizer: PreTrainedTokenizerBase, **dims: int) -> Any:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=dims["hidden_size"],
        intermediate_size=dims["intermediate_size"],
        num_hidden_layers=dims["num_layers"],
        num_attention_heads=dims["num_heads"],
        num_key_value_heads=dims["num_kv_heads"],
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    head_dim = dims["hidden_size"] // dims["num_heads"]
    if arch == "llama":
        return LlamaConfig(**common, head_dim=head_dim, tie_word_embeddings=False)
    if arch == "qwen2":
        return Qwen2Config(**common, tie_word_embeddings=False)
    if arch == "gemma2":
        # Gemma-2 defaults to head_dim 256 and a matching attention scale; shrink both.
        return Gemma2Config(
            **common, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=256, tie_word_embeddings=True
        )
    if arch == "gemma3":
        # Gemma-3 (text): sliding-window and global layers alternate (the real 270M model has
        # 5 sliding : 1 global; here every second layer is global, so two layers have one of each),
        # gated-GELU MLP, q/k norms, scaled and tied embeddings, no soft-capping.
        layer_types = ["full_attention" if (i + 1) % 2 == 0 else "sliding_attention" for i in range(dims["num_layers"])]
        return Gemma3TextConfig(
            **common, head_dim=head_dim, query_pre_attn_scalar=head_dim, sliding_window=GEMMA3_SLIDING_WINDOW,
            layer_types=layer_types, tie_word_embeddings=True,
        )
    raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")


_MODEL_CLASSES = {
    "llama": LlamaForCausalLM, "gemma2": Gemma2ForCausalLM, "gemma3": Gemma3ForCausalLM, "qwen2": Qwen2ForCausalLM,
}


def build_tiny_model(
    arch: str = "llama",
    tokenizer: PreTrainedTokenizerBase | None = None,
    *,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int | None = None,
    intermediate_size: int = 128,
    seed: int = 0,
    vocab_size: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised tiny causal LM (float32, eval mode, eager attention).

    ``vocab_size`` defaults to ``len(tokenizer)``; the tokenizer defaults to
    :func:`build_tiny_tokenizer`. The same ``seed`` gives bit-identical weights; the global
    torch RNG state is left untouched. ~0.14-0.2 M parameters with the defaults. Gemma-3
    defaults to one key/value head (as the real 270M model) and alternates sliding-window
    (:data:`GEMMA3_SLIDING_WINDOW` tokens) and global layers.
    """
    if arch not in _MODEL_CLASSES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    if hidden_size % num_heads:
        raise ValueError("hidden_size must be divisible by num_heads")
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = _config(
        arch,
        vocab_size if vocab_size is not None else len(tokenizer),
        tokenizer,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads or (1 if arch == "gemma3" else num_heads),
        intermediate_size=intermediate_size,
    )
    # Eager attention: Gemma-2's logit soft-capping needs it, and it is exact with left padding.
    config._attn_implementation = "eager"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _MODEL_CLASSES[arch](config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model.float().eval()


def save_tiny_checkpoint(out_dir: str | Path, arch: str = "llama", **kw: Any) -> Path:
    """Build a tiny model + tokenizer and save both (safetensors) to ``out_dir``.

    ``kw`` goes to :func:`build_tiny_model` (``tokenizer=`` included). The folder then loads
    with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` offline.
    """
    out = Path(out_dir)
    tokenizer = kw.pop("tokenizer", None) or build_tiny_tokenizer()
    model = build_tiny_model(arch, tokenizer, **kw)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """A ``dtype`` setting (``float32``/``fp32``, ``float16``/``fp16``, ``bfloat16``/``bf16``, ``auto`` or
    None) as ``from_pretrained`` takes it."""
    if dtype is None or isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if dtype not in names:
        raise UserError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(names))} or auto", field="dtype")
    return names[dtype]


ALLOW_DOWNLOAD_ENV = "POLYALIGN_ALLOW_DOWNLOAD"


def _download_allowed(allow_download: bool | None) -> bool:
    if allow_download is not None:
        return allow_download
    return os.environ.get(ALLOW_DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes")


def resolve_model_source(path_or_id: str | Path) -> str:
    """What ``--model`` names: a local folder, a known model name (its converted folder), or a hub id.

    A known name (``polyalign models list``) resolves to its folder under the model cache; one
    not fetched yet is a :class:`~polyalign.errors.UserError` telling the user to run
    ``polyalign models get NAME``. A path that does not exist (``./x``, ``/x``, ``a/b/c``) is a
    :class:`~polyalign.errors.UserError`; anything else is returned as a hub id.
    """
    where = str(path_or_id)
    local = Path(where)
    if local.exists():
        if not local.is_dir():
            raise UserError("expected a model folder, got a file", file=where)
        return where
    from polyalign.real_models.registry import resolve_known_model

    known = resolve_known_model(where)
    if known is not None:
        return str(known)
    # A hub id is "name" or "org/name"; anything else that does not exist is a bad path.
    if where.startswith((".", "/", "~")) or where.count("/") > 1 or "\\" in where:
        raise UserError("no such model folder", file=where)
    return where


NOT_LOCAL = ("no such model folder, known model name (polyalign models list) or locally cached hub id; "
             "nothing is downloaded unless you pass polyalign --allow-download")


def pretrained_source(path_or_id: str | Path, *, allow_download: bool | None = None) -> tuple[str, bool]:
    """``(where, local_files_only)`` for any ``from_pretrained`` call (classifiers, translators,
    encoders, QLoRA bases): the same resolution and no-download rule as
    :func:`load_model_and_tokenizer`, so a mistyped folder is an error, never a download."""
    where = resolve_model_source(path_or_id)
    return where, Path(where).is_dir() or not _download_allowed(allow_download)


def load_model_and_tokenizer(
    path_or_id: str | Path,
    *,
    dtype: str | torch.dtype | None = None,
    device: str | torch.device | None = None,
    trust_remote_code: bool = False,
    allow_download: bool | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer (safetensors weights only), in eval mode.

    The one loading function every layer uses. ``path_or_id`` is a model folder, a known
    model name (``polyalign models get NAME`` converts it once) or a hub id. Nothing is
    downloaded unless ``allow_download`` is true (default: ``$POLYALIGN_ALLOW_DOWNLOAD``, set
    by ``polyalign --allow-download``): a mistyped folder such as ``runs/final`` looks like a
    hub id, and must be an error, never a download. When the tokenizer has no pad token, the
    eos token is used as pad (and written into the model's config and generation config).
    Padding side is left as saved: callers choose left padding for generation.
    A missing folder, a folder without safetensors weights, or an id that is not cached
    locally raises :class:`~polyalign.errors.UserError`.
    """
    where, local_only = pretrained_source(path_or_id, allow_download=allow_download)
    is_folder = Path(where).is_dir()
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, trust_remote_code=trust_remote_code,
                                                  local_files_only=local_only)
        model = AutoModelForCausalLM.from_pretrained(
            where, dtype=resolve_dtype(dtype), use_safetensors=True, trust_remote_code=trust_remote_code,
            local_files_only=local_only,
        )
    except (OSError, ValueError) as exc:
        if not is_folder and local_only:
            raise UserError(NOT_LOCAL, file=where) from None
        raise UserError(f"cannot load model: {str(exc).splitlines()[0]}", file=where) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise UserError("tokenizer has neither a pad token nor an eos token", file=where, field="pad_token")
        tokenizer.pad_token = tokenizer.eos_token
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    if device is not None:
        model = model.to(device)
    return model.eval(), tokenizer
