"""vLLM generation backend (optional: ``pip install vllm``; imported only when used).

Same contract as :class:`polyalign.evaluation.generation.HFGenerator`: ``generate_batch(tasks)``
returns one record per task. Prompts are passed as the token ids the HF backend renders, and
sampled rows carry their own seed (``row_seed``), so a sample does not depend on which other
prompts share its batch. Not exercised by the test suite beyond its missing-package error: vLLM
does not install on the CPU machines this project is tested on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from polyalign.errors import UserError
from polyalign.evaluation.generation import GenerationSettings, GenerationTask, prompt_sha, row_seed

#: Requests handed to vLLM at once (it schedules them itself; larger is better up to memory).
DEFAULT_VLLM_BATCH_SIZE = 256


def _adapter_rank(adapter: str) -> int | None:
    """The LoRA rank ``r`` in a PEFT adapter's ``adapter_config.json`` (None when unreadable)."""
    try:
        return int(json.loads((Path(adapter) / "adapter_config.json").read_text(encoding="utf-8"))["r"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_adapter(adapter: str | Path) -> Path:
    """The adapter folder, which must hold ``adapter_model.safetensors`` (never a pickle)."""
    path = Path(adapter)
    if not path.is_dir():
        raise UserError("no such adapter folder", file=path, field="adapter")
    if not (path / "adapter_model.safetensors").is_file():
        raise UserError("no adapter_model.safetensors in the adapter folder (safetensors only)", file=path,
                        field="adapter")
    return path


def engine_options(adapter: str | None, *, trust_remote_code: bool, **options: Any) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments: weights from safetensors only (vLLM would otherwise
    fall back to pickled ``*.bin``/``*.pt``), LoRA slots sized to the adapter."""
    engine = {**options, "trust_remote_code": trust_remote_code, "load_format": "safetensors"}
    if adapter is not None:
        check_adapter(adapter)
        # vLLM preallocates LoRA slots of max_lora_rank (default 16): size them to the adapter.
        engine.setdefault("enable_lora", True)
        rank = _adapter_rank(adapter)
        if rank is not None:
            engine.setdefault("max_lora_rank", rank)
    return engine


class VLLMGenerator:
    """Generation with vLLM (optional dependency, imported here only).

    Per-request seeds (``row_seed``) make each sample independent of batch composition.
    Prompts are passed as token ids rendered exactly like the HF backend's.
    """

    name = "vllm"

    def __init__(self, model_path: str, settings: GenerationSettings, *, batch_size: int = DEFAULT_VLLM_BATCH_SIZE,
                 adapter: str | None = None, trust_remote_code: bool = False, **engine_kwargs: Any) -> None:
        if adapter is not None:
            check_adapter(adapter)  # before the engine starts: a pickled adapter is never loaded
        try:
            import vllm  # noqa: PLC0415 - optional, heavy
        except ImportError:
            raise UserError("the vLLM backend needs the 'vllm' package (pip install vllm); or use --backend hf",
                            field="backend") from None
        self._vllm = vllm
        self.settings = settings.validate()
        self.batch_size = batch_size
        options = engine_options(adapter, trust_remote_code=trust_remote_code, **engine_kwargs)
        self.llm = vllm.LLM(model=str(model_path), **options)
        self.tokenizer = self.llm.get_tokenizer()
        self.lora = None
        if adapter is not None:
            from vllm.lora.request import LoRARequest  # noqa: PLC0415

            self.lora = LoRARequest("adapter", 1, str(adapter))

    def generate_batch(self, tasks: Sequence[GenerationTask]) -> list[dict[str, Any]]:
        s = self.settings
        params = [
            self._vllm.SamplingParams(
                max_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                repetition_penalty=s.repetition_penalty,
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
