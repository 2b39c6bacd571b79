"""The one record walk (records.record_parts) and the inspect summary built on it, against hand counts."""

from __future__ import annotations

import statistics

from polyalign.data.formats.preference import prompt_text
from polyalign.data.records import EvalPrompt, Message, ParallelPair, PreferencePair, PromptVariants, record_parts
from polyalign.data.summary import language_counts, length_stats


def _pair(pid: str, lang: str, user: str, chosen: str, rejected: str, variants=None) -> PreferencePair:
    return PreferencePair(id=pid, prompt=(Message("system", "Be brief."), Message("user", user)), chosen=chosen,
                          rejected=rejected, language=lang, variants=variants)


EN = _pair("a", "en", "How are you?", "Fine.", "Go away.")
DE = _pair("a", "de", "Wie geht es?", "Gut.", "Geh weg.")
VARIANTS = PromptVariants(id="v", prompts={"en": (Message("user", "Hi"),), "sw": (Message("user", "Habari"),)})
MLC = _pair("m", "en", "Why?", "Because.", "No.", variants=VARIANTS)
PROMPT = EvalPrompt(id="e", language="zh", text="你好", benchmark="b")
RECORDS = [ParallelPair(id="p", dominant=EN, target=DE), VARIANTS, MLC, PROMPT]


def test_record_parts_walks_every_text_in_order():
    parts = list(record_parts(RECORDS))
    assert [(lang, role) for lang, role, _ in parts] == [
        ("en", "prompt"), ("en", "chosen"), ("en", "rejected"),  # the parallel pair's dominant side
        ("de", "prompt"), ("de", "chosen"), ("de", "rejected"),  # then its target side
        ("en", "prompt"), ("sw", "prompt"),  # prompt variants: one prompt per language
        ("en", "prompt"), ("en", "chosen"), ("en", "rejected"),  # an MLC pair: its own texts only
        ("zh", "prompt"),
    ]
    assert parts[0][2] == EN.prompt and parts[4][2] == "Gut." and parts[-1][2] == "你好"


def test_length_stats_and_language_counts_by_hand():
    prompts = [len(prompt_text(EN.prompt)), len(prompt_text(DE.prompt)), 2, 6, len(prompt_text(MLC.prompt)), 2]
    chosen, rejected = [5, 4, 8], [8, 8, 3]
    assert prompts == [12, 12, 2, 6, 4, 2]  # user turns only: the system turn does not count
    stats = length_stats(RECORDS)
    for name, values in (("prompt", prompts), ("chosen", chosen), ("rejected", rejected)):
        assert stats[name] == {"n": len(values), "min": min(values), "median": statistics.median(values),
                               "max": max(values)}
    # records per language: the parallel pair counts for en and de, the MLC pair for its variants' languages too
    assert language_counts(RECORDS) == {"en": 3, "de": 1, "sw": 2, "zh": 1}
    assert length_stats([]) == {}
