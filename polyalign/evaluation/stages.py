"""Building blocks of an eval run: settings, model loading, generate-then-judge.

:func:`generate_and_judge` is the resumable unit shared by the safety benchmark and the
benign (over-refusal) prompt set: it generates into ``<folder>/generations.jsonl`` and
judges into ``<folder>/judgments.jsonl`` (:class:`~polyalign.store.JsonlStore`:
finished work is skipped on a rerun with the same settings, other settings are refused).
Further judges (``--judge a,b``) judge the same generations, each into its own store
``judgments.<name>-<fingerprint>.jsonl`` (:func:`judgments_path`), so adding a judge to an
existing out folder judges the stored generations without generating again.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from polyalign.data.records import EvalPrompt
from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import BenchmarkSpec
from polyalign.evaluation.fingerprints import weak_reason
from polyalign.evaluation.generation import GenerationSettings, make_tasks, run_generation
from polyalign.evaluation.kinds import BenchmarkKind
from polyalign.io import text_fingerprint
from polyalign.store import JsonlStore, peek_fingerprint

GENERATIONS, JUDGMENTS = "generations.jsonl", "judgments.jsonl"


def log(message: str) -> None:
    print(f"polyalign eval: {message}", file=sys.stderr, flush=True)


def generation_settings(spec: BenchmarkSpec, seed: int = 0, **overrides: Any) -> GenerationSettings:
    """The benchmark's protocol defaults with the non-``None`` overrides applied."""
    values = {**spec.generation, **{k: v for k, v in overrides.items() if v is not None}, "seed": seed}
    try:
        return GenerationSettings(**values).validate()
    except TypeError as exc:
        raise UserError(f"unknown generation setting: {exc}", field="generation") from None


def load_model(model_or_path: Any, tokenizer: Any, adapter: str | Path | None, *, dtype: Any, device: Any,
               trust_remote_code: bool) -> tuple[Any, Any, str | None]:
    """``(model in eval mode, tokenizer, source path or None)``; the adapter (PEFT) applied."""
    source = None
    if isinstance(model_or_path, (str, Path)):
        from polyalign.models import load_model_and_tokenizer

        source = str(model_or_path)
        model, loaded_tok = load_model_and_tokenizer(source, dtype=dtype, device=device,
                                                     trust_remote_code=trust_remote_code)
        tokenizer = tokenizer if tokenizer is not None else loaded_tok
    else:
        model = model_or_path
        if tokenizer is None:
            raise UserError("an in-memory model needs its tokenizer (tokenizer=...)", field="tokenizer")
        if device is not None:
            model = model.to(device)
    if adapter is not None:
        if not Path(adapter).is_dir():
            raise UserError("no such adapter folder", file=adapter, field="adapter")
        if not (Path(adapter) / "adapter_model.safetensors").is_file():
            # PEFT would fall back to a pickled adapter_model.bin; polyalign loads safetensors only.
            raise UserError("no adapter_model.safetensors in the adapter folder (safetensors only)",
                            file=adapter, field="adapter")
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load adapter: {str(exc).splitlines()[0]}", file=adapter, field="adapter") from None
    model.eval()
    return model, tokenizer, source


def response_sha(text: str) -> str:
    """sha256 (hex) of the exact text a judgment was made on (stored with the judgment)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _judge_key(g: dict[str, Any]) -> tuple:
    return (g["id"], g["sample"], response_sha(g["text"]))


def judgments_path(folder: Path, name: str, fingerprint: str, *, primary: bool) -> Path:
    """Where one judge's verdicts live: each judge (name + settings fingerprint) has its own store.

    ``judgments.jsonl`` is the primary judge's (the name a single-judge run always used),
    unless another judge's verdicts are there: a judge whose fingerprint matches that
    file's header keeps it (so ``--judge a`` then ``--judge b,a`` reuses a's verdicts), and
    ``judgments.<name>-<fingerprint>.jsonl`` holds any other judge's. A primary judge
    without its own file and a ``judgments.jsonl`` of another judge opens that file, which
    refuses the other settings as before.
    """
    default = folder / JUDGMENTS
    own = folder / f"judgments.{name}-{fingerprint}.jsonl"
    if peek_fingerprint(default) == fingerprint:
        return default
    return own if own.exists() or not primary else default


def judge_stage(kind: BenchmarkKind, worker: Any, prompts: Sequence[EvalPrompt], generations: list[dict[str, Any]],
                store: JsonlStore, *, batch_size: int, progress: bool) -> dict[str, int]:
    """Judge (safety) or score (toxicity) every generation whose text has no verdict in ``store``.

    A verdict is keyed by ``(id, sample, response_sha256)``: one stored for another text of
    the same item (a regenerated or edited generation) is never reused, the text is judged again.
    """
    by_id = {p.id: p for p in prompts}
    pending = [g for g in generations if _judge_key(g) not in store]
    errors = 0
    bar = tqdm(total=len(generations), initial=len(generations) - len(pending), desc=kind.progress_label,
               unit="item", disable=not progress, dynamic_ncols=True)
    try:
        for start in range(0, len(pending), batch_size):
            chunk = pending[start : start + batch_size]
            rows = kind.judge_chunk(worker, chunk, by_id)
            good = [r for r in rows if not kind.failed(r)]
            for g, row in zip(chunk, rows, strict=True):
                row["response_sha256"] = response_sha(g["text"])
            errors += len(rows) - len(good)
            store.append(good)  # failures are not stored: the next run retries them
            bar.update(len(chunk))
    finally:
        bar.close()
    return {"judged": len(pending) - errors, "judge_reused": len(generations) - len(pending), "judge_errors": errors}


def generate_and_judge(
    *,
    kind: BenchmarkKind,
    name: str,
    prompts: Sequence[EvalPrompt],
    settings: GenerationSettings,
    generator: Any,
    tokenizer: Any,
    model_identity: Any,
    backend: str,
    worker: Any,
    folder: Path,
    run_id: str,
    judge_batch_size: int,
    progress: bool,
    batch_delay: float = 0.0,
    extra_workers: Sequence[Any] = (),
) -> dict[str, Any]:
    """Generate for ``prompts`` and judge the generations, both resumably, under ``folder``.

    Returns ``{"generations": [row per (id, sample)], "judgments": {(id, sample): row},
    "fingerprint": <generation settings fingerprint>, "stats": {generated, reused, judged,
    judge_reused, judge_errors, recovered_torn_lines}, "other_judges": [{name, judgments,
    file, stats}]}``: ``judgments``/``stats`` are the primary ``worker``'s; each of
    ``extra_workers`` judges the same generations into its own store (:func:`judgments_path`).
    """
    gen_settings = {"benchmark": name, "generation": settings.to_dict(), "backend": backend, "model": model_identity}
    gen_fp = text_fingerprint(gen_settings)
    tasks = make_tasks(tokenizer, prompts, settings)
    n_languages = len({p.language for p in prompts})
    log(f"{name}: {len(prompts)} prompts x {settings.num_samples} sample(s) in {n_languages} language(s) -> {folder}")
    weak = weak_reason(model_identity) if isinstance(model_identity, dict) else None
    with JsonlStore(folder / GENERATIONS, kind="generations", fingerprint=gen_fp, settings=gen_settings, run_id=run_id,
                    refuse_reuse=weak,
                    hint="use a new --out folder (or delete the file) to generate again") as gen_store:
        gen_stats = run_generation(generator, tasks, gen_store, progress=progress, batch_delay=batch_delay)
        generations = [gen_store.get(t.key) for t in tasks]
        gen_torn = gen_store.recovered_torn_lines
    log(f"generated {gen_stats['generated']} new, reused {gen_stats['reused']} from the store (run {run_id})")

    judgments, judge_stats, judge_torn, others, judgments_file = {}, {}, 0, [], JUDGMENTS
    for position, judge in enumerate([worker, *extra_workers]):
        # The judge's own settings() (never secrets) identify its verdicts.
        judge_settings = {"generations": gen_fp, "kind": kind.name, "judge": judge.settings(),
                          "keyed_by": "response_sha256"}
        fingerprint = text_fingerprint(judge_settings)
        path = judgments_path(folder, judge.name, fingerprint, primary=position == 0)
        hint = (f"to judge the same generations differently, add the judge (--judge {judge.name},OTHER keeps both "
                f"apart) or copy {GENERATIONS} into a new --out folder and rerun there (generation is then skipped)")
        with JsonlStore(path, kind="judgments", fingerprint=fingerprint, settings=judge_settings,
                        key_fields=("id", "sample", "response_sha256"), run_id=run_id, hint=hint) as judge_store:
            stats = judge_stage(kind, judge, prompts, generations, judge_store, batch_size=judge_batch_size,
                                progress=progress)
            # Only verdicts on the exact texts generated now count (keyed by the text's hash).
            verdicts = {(g["id"], g["sample"]): r for g in generations
                        if (r := judge_store.get(_judge_key(g))) is not None}
            judge_torn += judge_store.recovered_torn_lines
        if stats["judge_errors"]:
            log(f"judge {judge.name}: {stats['judge_errors']} item(s) could not be judged (counted as n_error / error; "
                "rerun to retry)")
        if position == 0:
            judgments, judge_stats, judgments_file = verdicts, stats, path.name
        else:
            others.append({"name": judge.name, "judgments": verdicts, "file": path.name, "stats": stats})
    return {"generations": generations, "judgments": judgments, "judgments_file": judgments_file,
            "fingerprint": gen_fp, "other_judges": others,
            # rendered prompt tokens (chat template included) per prompt, for the per-language length check
            "prompt_lengths": [(t.prompt.language, len(t.input_ids)) for t in tasks if t.sample == 0],
            "stats": {**gen_stats, **judge_stats, "recovered_torn_lines": gen_torn + judge_torn}}
