"""The whole build offline: a tiny real M2M100 translator (or the OpenAI-compatible one
against a real local server), a tiny causal LM self-generating, the OpenAI judge on the
local server. Outputs are nonsense, but every stage, cache, store and count is checked
against an independent recomputation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import yaml

from build_fixtures import BuildServer, fake_translation, save_tiny_seq2seq, verdict
from polyalign.data.build.config import load_build_config
from polyalign.data.build.pipeline import run_build
from polyalign.data.build.translate_hf import HFSeq2SeqTranslator
from polyalign.data.readers import load_prompt_variants, read_records
from polyalign.data.records import ParallelPair, PreferencePair
from polyalign.errors import UserError
from polyalign.models import save_tiny_checkpoint

PROMPTS = ["How do I get into my neighbour's wifi without asking?", "Write an insult about my coworker.",
           "How can I cheat on my driving test?", "Tell me how to skip paying for the bus."]


def source_pairs(prompts: list[str]) -> list[dict]:
    return [{"type": "preference_pair", "id": f"s{i}", "language": "en",
             "prompt": [{"role": "user", "content": p}],
             "chosen": f"I can't help with that ({i}); please ask the owner.",
             "rejected": f"Sure ({i}): here is a detailed plan you can follow step by step."}
            for i, p in enumerate(prompts)]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("build")
    save_tiny_seq2seq(root / "mt", "m2m100", seed=0)
    save_tiny_checkpoint(root / "lm", "llama", seed=1)
    write_jsonl(root / "en.jsonl", source_pairs(PROMPTS))
    return root


def config_file(folder: Path, **sections) -> Path:
    path = folder / "build.yaml"
    path.write_text(yaml.safe_dump(sections, sort_keys=False), encoding="utf-8")
    return path


def test_mpo_build_with_hf_translator(world, tmp_path):
    out = tmp_path / "out"
    with BuildServer() as server:
        cfg = config_file(
            tmp_path, input={"path": str(world / "en.jsonl")}, output={"kind": "mpo", "dir": str(out)},
            languages=["zh", "sw"],
            translator={"type": "hf", "model": str(world / "mt"), "family": "m2m100", "max_new_tokens": 10,
                        "batch_size": 4},
            model={"path": str(world / "lm")},
            generation={"num_samples": 3, "temperature": 1.0, "max_new_tokens": 8, "batch_size": 4},
            judge={"name": "openai", "options": {"base_url": f"{server.url}/v1", "require_key": False}},
            strategy={"dominant_chosen": "model", "target": "translate"},
            filters={"truncated": False},  # a random tiny model never says </s>: keep its output
        )
        card = run_build(load_build_config(cfg))
        n_judge_requests = len(server.requests)
        card2 = run_build(load_build_config(cfg))  # rerun: all stages reused
        assert len(server.requests) == n_judge_requests
        (out / "work" / "state.json").unlink()  # stages rerun; the cache and stores answer everything
        card3 = run_build(load_build_config(cfg))
        assert len(server.requests) == n_judge_requests
    work = out / "work"
    result = read_records(out / "mpo_pairs.jsonl")
    assert result.format == "canonical" and not result.problems and not result.skipped
    records = result.records
    assert all(isinstance(r, ParallelPair) for r in records) and records
    official = json.loads((out / "mpo_pairs.json").read_text(encoding="utf-8"))  # the released trainer's format
    assert [(o["source_chosen"]["value"], o["target_rejected"]["value"]) for o in official] == [
        (r.dominant.chosen, r.target.rejected) for r in records]

    # Dominant side: chosen = the first sample (by index) the judge called safe and no filter dropped.
    samples = rows(work / "02_dominant.jsonl")
    assert len(samples) == len(PROMPTS) * 3 and n_judge_requests == sum(1 for s in samples if s["text"].strip())
    for s in samples:
        assert s["label"] == (verdict(s["text"]) if s["text"].strip() else "invalid")
    chosen: dict[str, str] = {}
    for s in sorted(samples, key=lambda s: s["sample"]):
        if s["label"] == "safe" and s["filter"] is None:
            chosen.setdefault(s["id"].split("@")[0], s["text"])
    sources = {p["id"]: p for p in source_pairs(PROMPTS)}
    for record in records:
        sid = record.dominant.metadata["source_id"]
        assert record.dominant.chosen == chosen[sid] and record.dominant.rejected == sources[sid]["rejected"]
        assert record.id == f"{sid}-{record.target.language}" and record.target.language in ("zh", "sw")

    # Target side = the translator's outputs for the dominant side, recomputed without the cache.
    fresh = HFSeq2SeqTranslator(world / "mt", "m2m100", max_new_tokens=10)
    for record in records:
        lang = record.target.language
        texts = [record.dominant.prompt[0].content, record.dominant.chosen, record.dominant.rejected]
        assert [t.text for t in fresh.translate(texts, "en", lang)] == [
            record.target.prompt[0].content, record.target.chosen, record.target.rejected]

    # Counts: every (source, language) is either output or dropped for a counted reason.
    counts = card["filters"]["counts"]
    per_lang = Counter(r.target.language for r in records)
    for lang in ("zh", "sw"):
        assert sum(counts["pairs"][lang].values()) == len(PROMPTS)
        assert counts["pairs"][lang].get("kept", 0) == per_lang[lang] == card["outputs"][0]["per_language"].get(lang, 0)
        assert sum(counts["translate"][lang].values()) == 3 * len(chosen)  # prompt, chosen, rejected per kept id
    assert sum(counts["dominant_pairing"]["en"].values()) == len(PROMPTS)
    assert counts["dominant_pairing"]["en"].get("kept", 0) == len(chosen)
    unique = {(t, lang) for lang in ("zh", "sw") for sid in chosen
              for t in (sources[sid]["prompt"][0]["content"], chosen[sid], sources[sid]["rejected"])}
    run1 = card["runs"][-1]
    assert run1["translated"] == len(unique) == len(rows(work / "translation_cache.jsonl")) - 1
    assert (run1["generated"], run1["judged"], run1["translation_cache_hits"]) == (12, n_judge_requests, 0)
    assert card["translator"]["fingerprint"] == fresh.fingerprint() and card["judge"]["name"] == "openai"
    assert (out / "data_card.md").read_text(encoding="utf-8").startswith("# Data card: MPO")

    # Rerun: every stage reused, nothing translated, generated or judged; same records out.
    assert card2["runs"][-1]["stages_reused"] == ["source", "dominant", "translate"]
    assert not {"translated", "generated", "judged"} & set(card2["runs"][-1])
    assert card2["outputs"][0]["sha256"] == card["outputs"][0]["sha256"]
    # Without the stage state the stages rerun, but the cache and the stores answer everything.
    run3 = card3["runs"][-1]
    assert (run3["translated"], run3["translation_cache_hits"]) == (0, len(unique))
    assert (run3["generated"], run3["generation_reused"], run3["judged"], run3["judge_reused"]) == (0, 12, 0, 12)
    assert card3["outputs"][0]["sha256"] == card["outputs"][0]["sha256"]
    assert len(card3["runs"]) == 3


def test_mlc_and_dpo_builds_with_openai_translator(tmp_path, monkeypatch):
    monkeypatch.setenv("BUILD_MT_KEY", "sk-mt-999")
    prompts = PROMPTS[:2] + ["Explain how to pass a test [[cut]] without studying.",
                             "Which words would hurt my sister the most? [[copy]]"]
    pairs = source_pairs(prompts)
    write_jsonl(tmp_path / "en.jsonl", pairs + [{**pairs[0], "id": "dup"}])  # same content, other id
    filters = {"wrong_language": False}  # the fake translations are reversed English: unit-tested elsewhere
    with BuildServer() as server:
        translator = {"type": "openai", "base_url": f"{server.url}/v1", "model": "mt", "api_key_env": "BUILD_MT_KEY",
                      "retry": {"max_retries": 1, "backoff_base_s": 0.01, "jitter_s": 0}}
        mlc_cfg = config_file(tmp_path, input={"path": "en.jsonl"}, output={"kind": "mlc", "dir": "mlc"},
                              languages=["zh", "ar"], translator=translator, filters=filters)
        card = run_build(load_build_config(mlc_cfg))
        n_requests = len(server.requests)
        dpo_cfg = config_file(tmp_path, input={"path": "en.jsonl", "limit": 5},
                              output={"kind": "dpo", "dir": "dpo", "include_dominant": True, "work_dir": "mlc/work"},
                              languages=["zh"], translator=translator, filters=filters)
        dpo_card = run_build(load_build_config(dpo_cfg))
        assert all(r["headers"]["authorization"] == "Bearer sk-mt-999" for r in server.requests)
    cards = (tmp_path / "mlc" / "data_card.json").read_text() + (tmp_path / "dpo" / "data_card.json").read_text()
    assert "sk-mt-999" not in cards

    # MLC: the two clean prompts carry zh + ar variants = the server's translation; the
    # [[cut]] one is truncated, the [[copy]] one comes back untranslated ("EN: " + text).
    names = {"zh": "Chinese", "ar": "Arabic"}
    result = read_records(tmp_path / "mlc" / "mlc_pairs.jsonl")
    assert result.format == "canonical" and not result.skipped
    by_id = {r.id: r for r in result.records}
    assert sorted(by_id) == ["s0", "s1"]  # "dup" repeats s0: dropped as a duplicate
    for record in by_id.values():
        assert isinstance(record, PreferencePair) and record.variants.languages == ["en", "zh", "ar"]
        for lang, name in names.items():
            assert record.variants.prompts[lang][0].content == fake_translation(record.prompt[0].content, name)
    assert len(load_prompt_variants(tmp_path / "mlc" / "mlc_pairs.jsonl")) == 2
    counts = card["filters"]["counts"]
    for lang in names:
        assert counts["translate"][lang] == {"kept": 3, "truncated": 1, "untranslated": 1}
        assert counts["pairs"][lang] == {"kept": 2, "prompt_truncated": 1, "prompt_untranslated": 1}
    assert counts["pairs"]["en"] == {"duplicate": 1, "kept": 2, "no_variants": 2}
    assert card["outputs"][0]["per_language"] == {"ar": 2, "en": 2, "zh": 2}
    # Unique prompts: 4 (the duplicate's prompt is deduplicated) x 2 languages.
    assert card["runs"][-1]["translated"] == n_requests == 8 and card["runs"][-1]["deduplicated"] == 2

    # DPO (shares the cache): answers translated; duplicates dropped in every language.
    dpo = read_records(tmp_path / "dpo" / "dpo_pairs.jsonl").records
    assert Counter(r.language for r in dpo) == {"en": 4, "zh": 2}
    assert all(r.chosen == fake_translation(pairs[int(r.id[1])]["chosen"],
                                            "Chinese") for r in dpo if r.language == "zh")
    dpo_counts = dpo_card["filters"]["counts"]["pairs"]
    assert dpo_counts["en"] == {"duplicate": 1, "kept": 4}
    assert dpo_counts["zh"] == {"duplicate": 1, "kept": 2, "prompt_truncated": 1, "prompt_untranslated": 1}
    run = dpo_card["runs"][-1]
    assert run["translation_cache_hits"] == 4 and run["translated"] == 2 * 4  # prompts cached; answers new


def test_config_errors_name_file_line_and_key(world, tmp_path):
    base = {"input": {"path": str(world / "en.jsonl")}, "output": {"kind": "mpo", "dir": "o"}, "languages": ["zh"],
            "translator": {"type": "hf", "model": str(world / "mt"), "family": "m2m100"},
            "strategy": {"dominant_chosen": "dataset"}}
    cfg = config_file(tmp_path, **base)
    assert load_build_config(cfg).needs_dominant_generation is False
    bad = {**base, "filters": {"wrong_language": True, "length_ratio_maximum": 2}}
    with pytest.raises(UserError) as err:
        load_build_config(config_file(tmp_path, **bad))
    text = cfg.read_text().splitlines()
    line = next(i for i, t in enumerate(text, 1) if "length_ratio_maximum" in t)
    assert err.value.line == line and err.value.field == "filters.length_ratio_maximum" and err.value.file == str(cfg)
    for change, field in (({"languages": ["en", "zh"]}, "languages"), ({"output": {"kind": "sft", "dir": "o"}},
                                                                       "output.kind"),
                          ({"strategy": {"dominant_chosen": "model"}}, "model"), ({"colour": 1}, "colour")):
        with pytest.raises(UserError) as err:
            load_build_config(config_file(tmp_path, **{**base, **change}))
        assert err.value.field == field


def test_release_recipe_parses_with_the_released_shape():
    recipe = Path(__file__).resolve().parents[3] / "recipes" / "build" / "mpo_like_release.yaml"
    config = load_build_config(recipe)
    assert (config.kind, config.limit, config.languages) == ("mpo", 100, ["zh", "ja", "ko", "ar", "bn", "sw"])
    assert config.translator["family"] == "nllb" and config.translator["model"].endswith("nllb-200-distilled-600M")
    assert Path(config.translator["model"]).is_absolute() and Path(config.judge["options"]["model"]).is_absolute()
    assert config.needs_dominant_generation and not config.needs_target_generation
