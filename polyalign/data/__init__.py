"""Data layer: typed records, language codes, readers/writers, validation, tokenisation."""

from polyalign.data.languages import canonical_language, language_name
from polyalign.data.records import (
    EvalPrompt,
    Message,
    ParallelPair,
    PreferencePair,
    PromptVariants,
)

__all__ = [
    "EvalPrompt",
    "Message",
    "ParallelPair",
    "PreferencePair",
    "PromptVariants",
    "canonical_language",
    "language_name",
]
