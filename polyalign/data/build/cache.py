"""Persistent translation cache: a rerun never translates the same text twice.

One append-only JSONL file (a :class:`polyalign.store.JsonlStore`, so writes are
``fsync``-ed batch by batch, a torn last line from a kill is recovered, and one process
holds the file at a time). Each record is keyed by
``key = text_fingerprint(text, source, target, translator_fingerprint)``: the same text
translated by another model, with other decoding settings or into another language is a
different entry, so one cache file may serve several translators.

Failed translations (HTTP errors after retries) are not cached: the next run retries them.
Counters (``hits``, ``translated``, ``errors``, ``deduplicated``) are kept per process and
written into the data card, which is how the resume tests prove nothing ran twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from polyalign.data.build.translation import Translation, Translator
from polyalign.io import text_fingerprint
from polyalign.store import JsonlStore

CACHE_KIND = "translation_cache"
CACHE_VERSION = "1"


def cache_key(text: str, source: str, target: str, translator_fp: str) -> str:
    """``text_fingerprint(text, source, target, translator_fp)`` (16 hex chars)."""
    return text_fingerprint(text, source, target, translator_fp)


class TranslationCache:
    """Append-only translation cache file (see the module docstring). Use as a context manager."""

    def __init__(self, path: str | Path, *, run_id: str | None = None) -> None:
        self.path = Path(path)
        self.store = JsonlStore(self.path, kind=CACHE_KIND, fingerprint=CACHE_VERSION, run_id=run_id,
                                settings={"version": CACHE_VERSION}, key_fields=("key",),
                                hint="the translation cache has a different layout version; use another cache file")
        self.stats: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self.store)

    def get(self, text: str, source: str, target: str, translator_fp: str) -> dict[str, Any] | None:
        return self.store.get((cache_key(text, source, target, translator_fp),))

    def translate(
        self,
        translator: Translator,
        texts: Sequence[str],
        source: str,
        target: str,
        *,
        batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> list[Translation]:
        """Translate ``texts`` (``source`` -> ``target``) through the cache; one result per text.

        Unique texts not in the cache are sent to ``translator`` in batches of
        ``batch_size`` (default: the translator's); each batch is appended (durably) before
        the next starts, so a kill loses at most the batch in flight. ``on_batch(n)`` is
        called after the ``n``-th translated batch (used for crash-point tests).
        """
        fp = translator.fingerprint()
        unique = list(dict.fromkeys(texts))
        self.stats["deduplicated"] += len(texts) - len(unique)
        todo = []
        for text in unique:
            if self.get(text, source, target, fp) is None:
                todo.append(text)
            else:
                self.stats["hits"] += 1
        size = batch_size or translator.batch_size
        failed: dict[str, str] = {}
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            results = translator.translate(chunk, source, target)
            rows = []
            for text, result in zip(chunk, results, strict=True):
                if result.error is not None:
                    failed[text] = result.error
                    self.stats["errors"] += 1
                    self.stats["error:" + result.error.split(" ")[0].split(":")[0].lower()] += 1
                    continue
                rows.append({"key": cache_key(text, source, target, fp), "translator": fp, "source": source,
                             "target": target, "text_sha": text_fingerprint(text), "translation": result.text,
                             "truncated": result.truncated})
            self.stats["translated"] += self.store.append(rows)
            if on_batch is not None:
                on_batch(start // size + 1)
        out = []
        for text in texts:
            row = self.get(text, source, target, fp)
            if row is None:  # its translation failed this run: report, do not invent
                out.append(Translation(None, error=failed.get(text, "translation failed")))
            else:
                out.append(Translation(row["translation"], truncated=bool(row.get("truncated"))))
        return out

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> TranslationCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
