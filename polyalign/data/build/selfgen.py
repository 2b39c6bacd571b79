"""Self-generation with the model being aligned, and judging of what it generated.

Both steps reuse the evaluation harness: :class:`polyalign.evaluation.generation.HFGenerator`
(left padding, KV cache, per-row seeded sampling, so a sample does not depend on its batch)
and :class:`polyalign.store.JsonlStore` (append-only, fsync per batch, torn-line
recovery, settings fingerprint in the header). A killed build therefore loses at most one
batch, and a rerun generates / judges only what is missing (counted in the returned stats).

Generation records: ``{"id", "sample", "language", "text", "n_tokens", "finish_reason",
"prompt_sha", ...}``; ``id`` is ``"<pair id>@<language>"``. Judgment records add the
judge's :class:`~polyalign.evaluation.judges.Judgment` fields (``label`` ...). Judge
failures (label ``error``) are not stored: a rerun retries them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation.fingerprints import model_fingerprint
from polyalign.evaluation.generation import GenerationSettings, HFGenerator, make_tasks, run_generation
from polyalign.evaluation.judges import JudgeInput
from polyalign.io import text_fingerprint
from polyalign.models import load_model_and_tokenizer
from polyalign.store import JsonlStore

DEFAULT_GENERATION = {"num_samples": 4, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 256, "seed": 0}


def generation_settings(options: dict[str, Any]) -> tuple[GenerationSettings, int]:
    """``(settings, batch_size)`` from the config's ``generation:`` section."""
    values = {**DEFAULT_GENERATION, **{k: v for k, v in options.items() if k != "batch_size"}}
    try:
        settings = GenerationSettings(**values).validate()
    except TypeError as exc:
        raise UserError(f"unknown generation setting: {exc}", field="generation") from None
    except UserError as exc:
        raise UserError(exc.message, field=f"generation.{exc.field}") from None
    return settings, int(options.get("batch_size", 8))


def gen_id(pair_id: str, language: str) -> str:
    """The store id of one prompt in one language: ``"<pair id>@<language>"``."""
    return f"{pair_id}@{language}"


class SelfGenerator:
    """The model being aligned, loaded once, generating several samples per prompt."""

    def __init__(self, model: Any, tokenizer: Any, settings: GenerationSettings, *, batch_size: int = 8,
                 identity: dict[str, Any] | None = None) -> None:
        self.generator = HFGenerator(model, tokenizer, settings, batch_size=batch_size)
        self.tokenizer = tokenizer
        self.settings = settings
        self.identity = identity or {}

    @classmethod
    def from_options(cls, model_options: dict[str, Any], generation_options: dict[str, Any]) -> SelfGenerator:
        """Load ``model.path`` (safetensors, no remote code) with the generation settings."""
        settings, batch_size = generation_settings(generation_options)
        model, tokenizer = load_model_and_tokenizer(model_options["path"], dtype=model_options.get("dtype"),
                                                    device=model_options.get("device"))
        return cls(model, tokenizer, settings, batch_size=batch_size,
                   identity=model_fingerprint(model, model_options["path"])["identity"])

    def store_settings(self) -> dict[str, Any]:
        """What decides a generation (store header): sampling settings and model identity."""
        return {"generation": self.settings.to_dict(), "model": self.identity}

    def generate(
        self,
        prompts: Sequence[EvalPrompt],
        store_path: str | Path,
        *,
        on_batch: Callable[[list[dict[str, Any]]], None] | None = None,
        run_id: str | None = None,
    ) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, int]]:
        """Generate ``num_samples`` answers for every prompt not yet in the store.

        Returns ``({(id, sample): record}, {"total", "reused", "generated"})``.
        """
        settings = self.store_settings()
        tasks = make_tasks(self.tokenizer, prompts, self.settings)
        with JsonlStore(store_path, kind="generations", fingerprint=text_fingerprint(settings), settings=settings,
                        run_id=run_id,
                        hint="the model or generation settings changed; use another work_dir") as store:
            stats = run_generation(self.generator, tasks, store, progress=False, on_batch=on_batch)
            records = {t.key: store.get(t.key) for t in tasks}
            stats["recovered_torn_lines"] = store.recovered_torn_lines
        return records, stats  # type: ignore[return-value]


def judge_generations(
    judge: Any,
    prompts: Sequence[EvalPrompt],
    generations: Sequence[dict[str, Any]],
    store_path: str | Path,
    *,
    generation_fp: str,
    batch_size: int = 32,
    run_id: str | None = None,
) -> tuple[dict[tuple[str, int], dict[str, Any]], dict[str, int]]:
    """Judge every generation not yet judged; ``({(id, sample): judgment row}, stats)``.

    ``stats``: ``{"judged", "reused", "errors"}``. Errors are not stored (retried next run).
    """
    settings = {"generations": generation_fp, "judge": judge.settings()}
    by_id = {p.id: p for p in prompts}
    stats = {"judged": 0, "reused": 0, "errors": 0}
    with JsonlStore(store_path, kind="judgments", fingerprint=text_fingerprint(settings), settings=settings,
                    run_id=run_id,
                    hint="the judge or the generations changed; use another work_dir") as store:
        pending = [g for g in generations if (g["id"], g["sample"]) not in store]
        stats["reused"] = len(generations) - len(pending)
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            inputs = [JudgeInput(prompt=by_id[g["id"]].text, response=g["text"], language=g["language"],
                                 id=f"{g['id']}#{g['sample']}") for g in chunk]
            rows = [{"id": g["id"], "sample": g["sample"], "language": g["language"], **j.to_dict()}
                    for g, j in zip(chunk, judge.judge(inputs), strict=True)]
            good = [r for r in rows if r["label"] != "error"]
            stats["errors"] += len(rows) - len(good)
            stats["judged"] += store.append(good)
        judged = {(r["id"], r["sample"]): r for r in store.records()}
    return judged, stats
