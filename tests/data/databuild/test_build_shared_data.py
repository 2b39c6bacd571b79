"""Build from the released PKU-SafeRLHF English pairs (the MLC test split in ../shared/data):
the released file is read as it is, and the built MLC variants are exactly the translations
of its English prompts (the OpenAI-compatible translator on a local server)."""

from __future__ import annotations

import yaml

from build_fixtures import BuildServer, fake_translation
from polyalign.data.build.config import load_build_config
from polyalign.data.build.pipeline import run_build
from polyalign.data.readers import load_preference_pairs, read_records


def test_mlc_build_from_released_pku_pairs(shared_data, tmp_path):
    released = shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl"
    english = load_preference_pairs(released)[:3]
    with BuildServer() as server:
        cfg = tmp_path / "build.yaml"
        cfg.write_text(yaml.safe_dump({
            "input": {"path": str(released), "limit": 3}, "output": {"kind": "mlc", "dir": "out"},
            "languages": ["zh", "bn"],
            "translator": {"type": "openai", "base_url": f"{server.url}/v1", "model": "mt", "require_key": False},
            "filters": {"wrong_language": False},
        }), encoding="utf-8")
        card = run_build(load_build_config(cfg))
        distinct = {p.prompt[-1].content for p in english}
        assert len(server.requests) == card["runs"][-1]["translated"] == 2 * len(distinct)
    assert card["input"]["format"] == "mlc" and card["input"]["n_selected"] == 3
    # The fake "translations" are reversed English: the reader's language check would rightly
    # reject them as not Chinese / Bengali, so it is off here (the format is what is checked).
    result = read_records(tmp_path / "out" / "mlc_pairs.jsonl", check_language=False)
    assert result.format == "canonical" and not result.skipped
    built = result.records
    assert [b.id for b in built] == [p.id for p in english]
    for pair, source in zip(built, english):
        assert (pair.prompt, pair.chosen, pair.rejected) == (source.prompt, source.chosen, source.rejected)
        assert pair.variants.languages == ["en", "zh", "bn"]
        for lang, name in (("zh", "Chinese"), ("bn", "Bengali")):
            expected = [fake_translation(m.content, name) for m in source.prompt]
            assert [m.content for m in pair.variants.prompts[lang]] == expected
