"""Optional source/translation similarity with a local multilingual embedding model.

A sentence-transformers-style folder (e.g. LaBSE or paraphrase-multilingual-MiniLM saved
locally): ``config.json`` + safetensors weights + tokenizer at the top, optionally
``modules.json`` / ``1_Pooling/config.json`` naming the pooling (``cls`` or ``mean``; mean
when absent). It is loaded with plain ``transformers.AutoModel`` (no sentence-transformers
dependency, ``trust_remote_code=False``). When no folder is configured, or it does not
exist, :func:`load_similarity` returns ``(None, note)`` and the build skips the check,
recording the note in the data card.

Score: ``cos(e(source), e(text))`` where ``e`` pools the last hidden state over non-padding
tokens (mean: ``sum_t h_t m_t / sum_t m_t``; cls: ``h_0``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from polyalign.errors import UserError


class EmbeddingSimilarity:
    """Cosine similarity of pooled embeddings from a local encoder folder."""

    def __init__(self, folder: str | Path, *, batch_size: int = 16, max_length: int = 256) -> None:
        from transformers import AutoModel, AutoTokenizer

        self.folder = Path(folder)
        self.batch_size = batch_size
        self.max_length = max_length
        self.pooling = _pooling_mode(self.folder)
        if not self.folder.is_dir():  # a folder only: never read as a hub id (no download)
            raise UserError("no such sentence-encoder folder", file=str(self.folder))
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), trust_remote_code=False, local_files_only=True)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModel.from_pretrained(str(self.folder), use_safetensors=True, trust_remote_code=False,
                                               local_files_only=True).eval()

    def embed(self, texts: list[str]) -> Any:
        """``[N, H]`` float32 pooled embeddings."""
        import torch

        rows = []
        for start in range(0, len(texts), self.batch_size):
            batch = self.tokenizer(texts[start : start + self.batch_size], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(input_ids=batch["input_ids"],
                                    attention_mask=batch["attention_mask"]).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            if self.pooling == "cls":
                rows.append(hidden[:, 0].float())
            else:
                rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp(min=1)).float())
        return torch.cat(rows) if rows else torch.zeros((0, 0))

    def __call__(self, sources: list[str], texts: list[str]) -> list[float]:
        """``cos(e(source_i), e(text_i))`` for each ``i``."""
        import torch

        a, b = self.embed(list(sources)), self.embed(list(texts))
        return torch.nn.functional.cosine_similarity(a, b, dim=-1).tolist()


def _pooling_mode(folder: Path) -> str:
    config = folder / "1_Pooling" / "config.json"
    if config.exists():
        data = json.loads(config.read_text(encoding="utf-8"))
        if data.get("pooling_mode_cls_token"):
            return "cls"
    return "mean"


def load_similarity(folder: str | Path | None) -> tuple[Callable[[list[str], list[str]], list[float]] | None, str]:
    """``(scorer, note)``; ``scorer`` is ``None`` (check skipped) when no usable folder is given."""
    if not folder:
        return None, "similarity check skipped: no embedding model configured (filters.similarity_model)"
    path = Path(folder)
    if not (path / "config.json").is_file():
        return None, f"similarity check skipped: no local embedding model at {path}"
    return EmbeddingSimilarity(path), f"similarity check with the embedding model at {path}"
