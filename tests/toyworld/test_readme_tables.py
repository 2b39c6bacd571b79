"""The README's demo block is what the committed results file renders, and the check catches drift."""

from __future__ import annotations

import copy
import json

import pytest

from polyalign.errors import UserError
from polyalign.toyworld.readme_tables import (
    BEGIN,
    END,
    QUICK_FILE,
    README,
    SUMMARY_FILE,
    check,
    differences,
    main,
    render_demo_block,
    replace_block,
)


def test_readme_block_equals_what_the_committed_summary_renders():
    assert check() == []
    assert main(["--check"]) == 0


def test_committed_summary_is_a_full_run_with_its_quick_reproduction_from_one_clean_commit():
    summary, quick = json.loads(SUMMARY_FILE.read_text()), json.loads(QUICK_FILE.read_text())
    reproduction = summary["quick_reproduction"]
    assert summary["config"]["name"] == "full" and reproduction["config"] == quick["config"]
    assert quick["config"]["name"] == "quick" and quick["config"]["mkl_branch"] == "COMPATIBLE"
    assert reproduction["git"] == summary["git"] and summary["git"]["dirty"] is False
    assert len(summary["git"]["commit"]) == 40
    assert len(summary["seeds"]) >= 2  # the README states a spread over seeds
    # Every seed's models were recorded (anyone rerunning a seed can compare weights, not only tables).
    for seed in summary["seeds"]:
        assert set(summary["per_seed"][str(seed)]["model_sha256"]) == {"base", "dpo", "mpo", "dpo_mlc"}


def test_every_table_cell_comes_from_the_summary(tmp_path):
    summary = json.loads(SUMMARY_FILE.read_text())
    block = render_demo_block(summary)
    stat = summary["metrics"]["dpo"]["xl"]["unsafe_rate"]
    assert f"{stat['mean']:.2f} ± {stat['sd']:.2f}" in block
    changed = copy.deepcopy(summary)
    changed["metrics"]["dpo"]["xl"]["unsafe_rate"]["mean"] = stat["mean"] + 0.5
    assert render_demo_block(changed) != block
    # A README holding the old block fails the check against the changed summary.
    readme, source = tmp_path / "README.md", tmp_path / "summary.json"
    readme.write_text(README.read_text())
    source.write_text(json.dumps(changed))
    problems = check(readme=readme, summary_file=source, quick_file=QUICK_FILE)
    assert any("demo block differs" in p for p in problems)
    # A summary whose quick reproduction came from another commit fails too.
    other = copy.deepcopy(summary)
    other["quick_reproduction"]["git"] = {"commit": "0" * 40, "dirty": False}
    source.write_text(json.dumps(other))
    readme.write_text(README.read_text())
    assert any("one clean commit" in p for p in check(readme=readme, summary_file=source, quick_file=QUICK_FILE))


def test_markers_must_be_present_once_and_in_order():
    assert replace_block(f"a\n{BEGIN}\nold\n{END}\nb\n", "NEW") == "a\nNEW\nb\n"
    for bad in ("no markers", f"{END}\n{BEGIN}", f"{BEGIN}\n{BEGIN}\n{END}"):
        with pytest.raises(UserError):
            replace_block(bad, "x")


def test_differences_names_each_path():
    assert differences({"a": {"b": 1, "c": [1, 2]}}, {"a": {"b": 1, "c": [1, 2]}}) == []
    found = differences({"a": {"b": 1.0, "c": 2}}, {"a": {"b": 1.0000000000000002}, "d": 0})
    assert found == ["/a/b: expected 1.0, found 1.0000000000000002", "/a/c: only in expected", "/d: only in found"]
