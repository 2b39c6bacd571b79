"""``polyalign report`` end to end: in-process and as a subprocess, good and bad inputs."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from polyalign.cli import main
from polyalign.data.languages import language_name
from report_fixtures import BASE_UNSAFE, MPO_UNSAFE

REPO = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def check_png(data: bytes) -> tuple[int, int]:
    """Signature, IHDR size > 0, and a real decode; returns (width, height)."""
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    pixels = mpimg.imread(io.BytesIO(data), format="png")
    assert pixels.shape[:2] == (height, width)
    return width, height


def embedded_pngs(html: str) -> list[bytes]:
    return [base64.b64decode(b, validate=True)
            for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)]


def _row(lang: str, *values: float) -> str:
    label = f"{language_name(lang)} ({lang})" + (" — dominant" if lang == "en" else "")
    return f'{label}</td>' + "".join(f"<td>{v:.3f}</td>" for v in values)


def test_report_in_process(runs, tmp_path, capsys):
    base, mpo = runs
    out = tmp_path / "out"
    assert main(["report", str(base), str(mpo), "-o", str(out), "--names", "base,MPO",
                 "--title", "MultiJail <test>"]) == 0
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "wrote" in capsys.readouterr().out
    # Self-contained: no external resource of any kind, the title escaped.
    assert not re.search(r'(src|href)="(?!data:)', html) and "<script" not in html and "<link" not in html
    assert "<title>MultiJail &lt;test&gt;</title>" in html
    # The unsafe_rate table: every language's values side by side; Italian only in base.
    for lang in MPO_UNSAFE:
        assert _row(lang, BASE_UNSAFE[lang], MPO_UNSAFE[lang]) in html, lang
    assert "Italian (it)</td><td>0.330</td><td>n/a</td>" in html
    assert '<tr class="dominant"><td class="label">English (en) — dominant</td>' in html
    # An unknown numeric metric is tabulated; a non-numeric one is noted, not tabulated.
    assert 'id="t-my_custom_score"' in html
    assert "metric &#x27;judge_version&#x27; is not a number in 1 language(s) (en)" in html
    # MPO helps the mean but hurts English: the delta is marked and a warning is shown.
    assert '<td class="worse">+0.030</td>' in html
    assert "MPO: mean unsafe_rate -0.164 vs base (better) but English (en) +0.030 (worse)" in html
    pngs = embedded_pngs(html)
    # safety bars, reward gap bars, gap-vs-safety scatter, retrieval lines, safety-vs-utility scatter.
    assert len(pngs) == 5
    for png in pngs:
        check_png(png)


def test_report_subprocess_and_markdown(runs, tmp_path):
    base, mpo = runs
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "polyalign", "report", str(base), str(mpo), "-o", str(out)],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    md = (out / "report.md").read_text(encoding="utf-8")
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)
    assert len(links) == 5
    for link in links:
        assert link.endswith(".png") and not link.startswith(("/", "http"))
        check_png((out / link).read_bytes())
    # Default names: the folders' names; base's unsafe row in Markdown, English bold.
    assert "| language | base | mpo |" in md
    assert "| **English (en) — dominant** | **0.050** | **0.080** |" in md
    assert "| **English (en) — dominant** | **+0.030 (worse)** |" in md
    # The embedded images are the same PNGs as the files beside the Markdown.
    html = (out / "report.html").read_text(encoding="utf-8")
    assert sorted(embedded_pngs(html)) == sorted((out / link).read_bytes() for link in links)
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temp files left behind


def _fail(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    return err


def test_missing_run_folder(tmp_path, capsys):
    missing = tmp_path / "nope"
    err = _fail(["report", str(missing), "-o", str(tmp_path / "out")], capsys)
    assert str(missing) in err and "no such run folder" in err
    assert not (tmp_path / "out").exists()


def test_missing_results_json(runs, tmp_path, capsys):
    empty = tmp_path / "empty_run"
    empty.mkdir()
    err = _fail(["report", str(runs[0]), str(empty), "-o", str(tmp_path / "out")], capsys)
    assert f"{empty / 'results.json'}:" in err and "no results.json" in err


def test_invalid_json_names_file_and_line(runs, tmp_path, capsys):
    base, mpo = runs
    lines = (mpo / "results.json").read_text().splitlines()
    lines[6] = lines[6].rstrip(",") + " oops,"  # break line 7
    (mpo / "results.json").write_text("\n".join(lines))
    err = _fail(["report", str(base), str(mpo), "-o", str(tmp_path / "out")], capsys)
    assert f"{mpo / 'results.json'}:7: invalid JSON" in err


def test_invalid_analysis_file_is_an_error(runs, tmp_path, capsys):
    base, mpo = runs
    (mpo / "reward_gap.json").write_text('{"per_language": {"en": {"policy_gap": "high"}}}')
    err = _fail(["report", str(base), str(mpo), "-o", str(tmp_path / "out")], capsys)
    assert str(mpo / "reward_gap.json") in err and "per_language.en.policy_gap" in err
    (mpo / "reward_gap.json").write_text('{"per_language": {"en": {"policy_gap": 1.0}},\n}')
    err = _fail(["report", str(base), str(mpo), "-o", str(tmp_path / "out")], capsys)
    assert f"{mpo / 'reward_gap.json'}:2: invalid JSON" in err


@pytest.mark.parametrize("payload, field", [
    ({"metrics": {}}, "metrics.per_language"),
    ({"metrics": {"per_language": {"en": 0.5}}}, "metrics.per_language.en"),
    ({"metrics": {"per_language": {"es": {"n": 1}, "sp": {"n": 2}}}}, "metrics.per_language"),
    ({"metrics": {"per_language": {"not a language!": {"n": 1}}}}, "metrics.per_language"),
])
def test_wrong_structure(tmp_path, capsys, payload, field):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps(payload))
    err = _fail(["report", str(run), "-o", str(tmp_path / "out")], capsys)
    assert str(run / "results.json") in err and f"field '{field}'" in err


def test_names_must_match_runs(runs, tmp_path, capsys):
    err = _fail(["report", *map(str, runs), "-o", str(tmp_path / "out"), "--names", "only-one"], capsys)
    assert "field 'names'" in err and "1 name(s) for 2 run folder(s)" in err
    err = _fail(["report", *map(str, runs), "-o", str(tmp_path / "out"), "--names", "a,a"], capsys)
    assert "unique" in err
