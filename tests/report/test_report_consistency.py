"""The consistency heat map: read from results.json, drawn with each cell's agreement colour."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from matplotlib import colormaps
from matplotlib.image import imread

from polyalign.errors import UserError
from polyalign.report import build_report, load_run
from polyalign.report.consistency_plot import consistency_heatmap
from report_fixtures import BASE_ACC, BASE_UNSAFE, results_json

MATRIX = {"languages": ["en", "zh", "sw"], "agreement": [[1.0, 0.8, 0.25], [0.8, 1.0, None], [0.25, None, 1.0]],
          "n": [[10, 10, 8], [10, 10, 0], [8, 0, 8]]}


def _write(folder, consistency):
    folder.mkdir(parents=True)
    data = results_json(BASE_UNSAFE, BASE_ACC, "models/base")
    data["consistency"] = consistency
    (folder / "results.json").write_text(json.dumps(data), encoding="utf-8")
    return folder


def _has_colour(pixels: np.ndarray, value: float) -> bool:
    rgb = np.array(colormaps["cividis"](value)[:3])
    return bool((np.abs(pixels[..., :3] - rgb).max(axis=-1) < 2.5 / 255).sum() > 50)


def test_heatmap_cells_have_their_agreement_colours(tmp_path):
    run = load_run(_write(tmp_path / "run", {"dominant": "en", "matrix": MATRIX}), "base")
    assert run.consistency == {"dominant": "en", "languages": ["en", "zh", "sw"], "agreement": MATRIX["agreement"]}
    plot = consistency_heatmap([run])
    pixels = imread(io.BytesIO(plot.png))
    for value in (1.0, 0.8, 0.25):
        assert _has_colour(pixels, value), value
    assert not _has_colour(pixels, 0.5)  # no cell holds 0.5
    assert consistency_heatmap([load_run(_write(tmp_path / "none", None), "x")]) is None


def test_report_includes_the_heatmap(tmp_path):
    folder = _write(tmp_path / "run", {"dominant": "en", "matrix": MATRIX})
    out = tmp_path / "report"
    build_report([folder], out)
    assert (out / "consistency_heatmap.png").read_bytes().startswith(b"\x89PNG")
    assert 'id="fig-consistency_heatmap"' in (out / "report.html").read_text(encoding="utf-8")
    assert "consistency_heatmap.png" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("bad,field", [
    ({"matrix": {"languages": ["en", "zh"], "agreement": [[1.0]]}}, "consistency.matrix"),
    ({"matrix": {"languages": ["en"], "agreement": [[1.5]]}}, "consistency.matrix"),
    ({"matrix": "nope"}, "consistency"),
    ({"matrix": {"languages": ["xx-not-a-code!"], "agreement": [[1.0]]}}, "consistency.matrix.languages"),
])
def test_malformed_consistency_is_a_user_error(tmp_path, bad, field):
    folder = _write(tmp_path / "run", bad)
    with pytest.raises(UserError) as info:
        load_run(folder, "x")
    assert info.value.field == field and "results.json" in str(info.value.file)
