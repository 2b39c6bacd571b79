"""The analyses' input readers (polyalign.analysis.inputs): values, counts and located errors."""

from __future__ import annotations

import json

import pytest

from polyalign.analysis.inputs import (
    language_subsets,
    probe_data,
    results_metric,
    reward_gap_pairs,
    texts_by_language,
    transfer_values,
)
from polyalign.data.records import EvalPrompt, Message, ParallelPair, PreferencePair, PromptVariants
from polyalign.data.writers import write_canonical
from polyalign.errors import UserError


def _results(path, per_language):
    path.write_text(json.dumps({"metrics": {"per_language": per_language}}))
    return str(path)


def test_transfer_values_from_a_plain_object_or_a_results_file(tmp_path):
    plain = tmp_path / "t.json"
    plain.write_text('{"en": 1, "sw": 0.25}')
    assert transfer_values(str(plain), None) == {"en": 1.0, "sw": 0.25}
    results = _results(tmp_path / "results.json", {"en": {"asr": 0.1}, "sw": {"asr": 0.4, "n": 3}, "zh": {"asr": None}})
    assert transfer_values(results, "asr") == results_metric(results, "asr") == {"en": 0.1, "sw": 0.4}
    with pytest.raises(UserError, match="pass --transfer-metric") as err:
        transfer_values(results, None)
    assert err.value.field == "transfer-metric"
    plain.write_text('{"en": "high"}')
    with pytest.raises(UserError, match="expected a JSON object"):
        transfer_values(str(plain), None)
    plain.write_text('{"en": 1,\n "sw": }')
    with pytest.raises(UserError, match="invalid JSON") as err:
        transfer_values(str(plain), None)
    assert err.value.line == 2


def test_probe_data_rows_and_located_errors(tmp_path):
    path = tmp_path / "probe.jsonl"
    path.write_text('{"text": "kind words", "label": 0}\n{"text": "cruel words", "label": true}\n')
    assert probe_data(str(path)) == (["kind words", "cruel words"], [0, 1])
    path.write_text('{"text": "ok", "label": 0}\n{"text": "x", "label": 2}\n')
    with pytest.raises(UserError) as err:
        probe_data(str(path))
    assert (err.value.line, err.value.field) == (2, "label")
    path.write_text('{"text": "  ", "label": 1}\n')
    with pytest.raises(UserError) as err:
        probe_data(str(path))
    assert (err.value.line, err.value.field) == (1, "text")


def test_texts_by_language_keeps_file_order(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [("en", "one"), ("sw", "moja"), ("en", "two")]
    write_canonical([EvalPrompt(id=str(i), language=lang, text=text, benchmark="b")
                     for i, (lang, text) in enumerate(rows)], path)
    assert texts_by_language(str(path)) == {"en": ["one", "two"], "sw": ["moja"]}


def test_language_subsets():
    variants = [PromptVariants(id="a", prompts={"en": (Message("user", "x"),), "de": (Message("user", "y"),)}),
                PromptVariants(id="b", prompts={"sw": (Message("user", "z"),), "en": (Message("user", "w"),)})]
    assert language_subsets(variants, None, {}) == {"all": ["en", "de", "sw"]}
    assert language_subsets(variants, ["en", "sw"], {"pair": ["en", "de"]}) == {"all": ["en", "sw"],
                                                                                 "pair": ["en", "de"]}


def _pair(pid, lang, chosen):
    return PreferencePair(id=pid, prompt=(Message("user", f"question {pid}"),), chosen=chosen, rejected="no",
                          language=lang)


def test_reward_gap_pairs_counts_every_pair(tmp_path):
    en = _pair("d", "en", "yes")
    path = tmp_path / "mpo.jsonl"
    # MPO repeats the dominant pair for every target language: it is scored once.
    write_canonical([ParallelPair(id="1", dominant=en, target=_pair("t1", "de", "ja")),
                     ParallelPair(id="2", dominant=en, target=_pair("t2", "sw", "ndiyo"))], path)
    data = reward_gap_pairs(str(path), language=None, detect_language=False, languages=None)
    assert [(p.language, p.chosen) for p in data.pairs] == [("en", "yes"), ("de", "ja"), ("sw", "ndiyo")]
    assert data.counts == {"pairs_scored": 3, "filtered_out_by_language": 0, "skipped_by_reader": {}}
    kept = reward_gap_pairs(str(path), language=None, detect_language=False, languages=["de", "sw"])
    assert kept.counts["pairs_scored"] == 2 and kept.counts["filtered_out_by_language"] == 1
    with pytest.raises(UserError, match="no preference pairs") as err:
        reward_gap_pairs(str(path), language=None, detect_language=False, languages=["zh"])
    assert err.value.file == str(path)
