"""Report: judge-agreement heat map (kappa colours, statements in the notes) and fertility beside safety."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

from polyalign.errors import UserError
from polyalign.evaluation.agreement import agreement_section
from polyalign.report import build_report, load_run
from polyalign.report.agreement_plot import agreement_heatmap
from report_fixtures import BASE_ACC, BASE_UNSAFE, results_json


def _agreement():
    # en: identical labels except one (kappa (3/4 - 1/2) / (1 - 1/2) = 0.5); zh: refusal all safe (kappa 0)
    labels = {"en": (["safe", "unsafe", "safe", "unsafe"], ["safe", "unsafe", "safe", "safe"]),
              "zh": (["unsafe", "unsafe", "safe", "safe"], ["safe", "safe", "safe", "safe"])}
    gens, a, b = [], {}, {}
    for lang, (la, lb) in labels.items():
        for i, (x, y) in enumerate(zip(la, lb)):
            gens.append({"id": f"{lang}{i}", "sample": 0, "language": lang, "text": "t"})
            a[(f"{lang}{i}", 0)], b[(f"{lang}{i}", 0)] = {"label": x}, {"label": y}
    return agreement_section(gens, [("openai", a), ("refusal", b)])


def _write(folder, agreement, extra=None):
    folder.mkdir(parents=True)
    data = results_json(BASE_UNSAFE, BASE_ACC, "models/base", extra)
    data["agreement"] = agreement
    (folder / "results.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def _has_colour(pixels: np.ndarray, value: float) -> bool:
    rgb = np.array(colormaps["RdBu"]((value + 1.0) / 2.0)[:3])
    return bool((np.abs(pixels[..., :3] - rgb).max(axis=-1) < 2.5 / 255).sum() > 50)


def test_heatmap_colours_and_statements_in_notes(tmp_path):
    section = _agreement()
    en, zh = (section["pairs"][0]["per_language"][x]["kappa"] for x in ("en", "zh"))
    assert en == pytest.approx(0.5) and zh == pytest.approx(0.0)
    run = load_run(_write(tmp_path / "run", section), "base")
    assert run.agreement["pairs"][0]["kappa"] == {"en": en, "zh": zh}
    pixels = imread(io.BytesIO(agreement_heatmap([run]).png))
    assert _has_colour(pixels, 0.5) and _has_colour(pixels, 0.0) and not _has_colour(pixels, -0.8)
    assert any("called safe by `refusal` but unsafe by `openai`" in n for n in run.notes)
    assert agreement_heatmap([load_run(_write(tmp_path / "none", None), "x")]) is None


def test_report_has_both_figures(tmp_path):
    extra = {lang: {"tokens_per_char": 0.3 + 0.1 * i, "n_prompts_over_context": i % 2}
             for i, lang in enumerate(BASE_UNSAFE)}
    folder = _write(tmp_path / "run", _agreement(), extra)
    out = tmp_path / "report"
    build_report([folder], out)
    html = (out / "report.html").read_text(encoding="utf-8")
    for slug in ("judge_agreement", "fertility_beside_safety"):
        assert (out / f"{slug}.png").read_bytes().startswith(b"\x89PNG") and f'id="fig-{slug}"' in html
    assert "Prompts longer than the context leaves: run:" in html and "refusal" in html


@pytest.mark.parametrize("bad,field", [
    ({"pairs": []}, "agreement"),
    ({"pairs": [{"a": "x", "b": "y", "per_language": {"en": {"kappa": 2.0}}}]}, "agreement.pairs[0].en"),
    ({"pairs": [{"a": "x", "per_language": {}}]}, "agreement.pairs[0]"),
])
def test_malformed_agreement_is_a_user_error(tmp_path, bad, field):
    with pytest.raises(UserError) as info:
        load_run(_write(tmp_path / "run", bad), "x")
    assert info.value.field == field
