"""Bad input: unknown settings, misaligned MPO records, overlong prompts, emptied responses."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from polyalign.cli import main
from polyalign.data.records import Message, ParallelPair, PreferencePair
from polyalign.data.writers import write_canonical
from polyalign.errors import UserError
from polyalign.training.config import load_config
from preference_prompts import make_pairs
from training_helpers import REPO, TINY_RECIPE, base_settings


def _cli_args(settings: dict) -> list[str]:
    out = ["train", "--config", str(TINY_RECIPE)]
    for key, value in settings.items():
        out += [f"--{key}", "null" if value is None else str(value)]
    return out


def test_unknown_yaml_key_exits_2_with_one_line_naming_file_line_and_key(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("method: dpo\noutput_dir: out\nlerning_rate: 1.0e-5\n")
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "polyalign", "train", "--config", str(recipe)], cwd=tmp_path,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert f"{recipe}:3" in lines[0] and "'lerning_rate'" in lines[0] and "learning_rate" in lines[0]


def test_unknown_override_and_bad_values_are_user_errors(tmp_path, capsys):
    assert main(["train", "--config", str(TINY_RECIPE), "--output_dir", str(tmp_path), "--no_such_key", "1"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    with pytest.raises(UserError, match="method"):
        load_config(TINY_RECIPE, {"output_dir": str(tmp_path), "method": "ppo"})
    with pytest.raises(UserError) as err:
        load_config(TINY_RECIPE, ["--output_dir", str(tmp_path), "--max_length", "many"])
    assert err.value.field == "max_length"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path}\ntruncation_mode: keep_middle\n")
    with pytest.raises(UserError) as err:
        load_config(recipe)
    assert (err.value.file, err.value.line, err.value.field) == (str(recipe), 2, "truncation_mode")
    config = load_config(TINY_RECIPE, ["--output_dir", str(tmp_path), "--learning_rate", "1e-5", "--mpo_beta=0.25"])
    assert config.learning_rate == 1e-5 and config.mpo_beta == 0.25 and config.remove_unused_columns is False


def _pair(pid: str, language: str, user: str = "How are you?") -> PreferencePair:
    return PreferencePair(id=pid, prompt=(Message("user", user),), chosen="Fine, thanks.", rejected="Go away.",
                          language=language)


@pytest.mark.parametrize("dominant, target, message", [
    ("de", "zh", "dominant side is in 'de'"),
    ("en", "en", "target side is in the dominant language"),
])
def test_misaligned_mpo_records_are_rejected(dominant, target, message, tiny_ckpt, tmp_path, capsys):
    data = tmp_path / "mpo.jsonl"
    write_canonical([ParallelPair(f"x{i}", _pair(f"x{i}-d", dominant), _pair(f"x{i}-t", target)) for i in range(3)],
                    data)
    settings = base_settings(tiny_ckpt, data, tmp_path / "out", method="mpo")
    assert main(_cli_args(settings)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "misaligned" in err and str(data) in err and "x0" in err


def test_overlong_prompts_are_counted_skips_or_errors(tiny_ckpt, tmp_path, capsys):
    data = tmp_path / "pairs.jsonl"
    write_canonical(make_pairs(6) + [_pair("huge", "en", user="very long question " * 40)], data)
    settings = base_settings(tiny_ckpt, data, tmp_path / "skip", max_length=48, max_prompt_length=None, max_steps=1)
    assert main(_cli_args(settings)) == 0
    info = json.loads((tmp_path / "skip" / "final" / "run_info.json").read_text())
    tok = info["data"]["train"]["tokenize"]
    assert tok["kept"] == 6 and tok["skipped"] == {"prompt longer than max_length": 1}
    assert tok["skipped_ids"]["prompt longer than max_length"] == ["huge"]
    # per language in run_info.json: the one skip is English's ("huge"), the records add up
    per = info["data"]["train"]["per_language"]
    assert per["en"]["skipped"] == 1 and sum(v["skipped"] for v in per.values()) == 1
    assert sum(v["records"] for v in per.values()) == 7 and sum(v["kept"] for v in per.values()) == 6
    # With prompt truncation that still fills max_length, the response is emptied: also counted.
    settings = base_settings(tiny_ckpt, data, tmp_path / "empty", max_length=48, max_prompt_length=48, max_steps=1)
    assert main(_cli_args(settings)) == 0
    info = json.loads((tmp_path / "empty" / "final" / "run_info.json").read_text())
    assert info["data"]["train"]["tokenize"]["skipped"] == {"response empty (after truncation)": 1}
    capsys.readouterr()
    settings = base_settings(tiny_ckpt, data, tmp_path / "err", max_length=48, max_prompt_length=None,
                             on_overlong="error")
    assert main(_cli_args(settings)) == 2
    err = capsys.readouterr().err
    assert "huge" in err and "prompt longer than max_length" in err


def test_recipes_parse_and_name_their_source():
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert len(recipes) >= 5
    for recipe in recipes:
        text = recipe.read_text()
        assert "docs/methods.md" in text, recipe.name
        settings = {"output_dir": "unused"} if "output_dir:" not in text else {}
        if "tiny" in recipe.name:
            settings = {"output_dir": "unused"}
        config = load_config(recipe, dict(settings, use_cpu=True, bf16=False))
        assert config.method in ("dpo", "mpo", "simpo", "orpo", "sft")
