"""``--key value`` overrides and recipe values are read by the target field's type, so
YAML 1.1's ``no``/``off``/``yes`` never turn an enum or text setting into a boolean."""

from __future__ import annotations

import pytest
from transformers.trainer_utils import IntervalStrategy, SaveStrategy

from polyalign.errors import UserError
from polyalign.training.config import load_config, parse_overrides


def test_enum_and_text_fields_keep_their_text(tmp_path):
    config = load_config(None, ["--output_dir", str(tmp_path), "--save_strategy", "no",
                                "--logging_strategy=no", "--run_name", "off", "--report_to", "none"])
    assert config.save_strategy == SaveStrategy.NO and config.logging_strategy == IntervalStrategy.NO
    assert config.run_name == "off"


def test_other_fields_still_parse_as_yaml(tmp_path):
    got = parse_overrides(["--max_steps", "3", "--bf16", "false", "--report_to", "[]", "--learning_rate", "2e-5",
                           "--run_name", "null"])
    assert got == {"max_steps": 3, "bf16": False, "report_to": [], "learning_rate": "2e-5", "run_name": None}
    config = load_config(None, ["--output_dir", str(tmp_path), "--max_steps", "3", "--learning_rate", "2e-5"])
    assert config.max_steps == 3 and config.learning_rate == pytest.approx(2e-5)
    with pytest.raises(UserError) as err:
        load_config(None, ["--output_dir", str(tmp_path), "--max_steps", "many"])
    assert err.value.field == "max_steps"


def test_recipe_plain_scalars_of_text_fields(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path}\nsave_strategy: no\nrun_name: yes\nbf16: no\nmax_steps: 2\n"
                      "eval_strategy: 'no'\n", encoding="utf-8")
    config = load_config(recipe)
    assert config.save_strategy == SaveStrategy.NO and config.eval_strategy == IntervalStrategy.NO
    assert config.run_name == "yes" and config.bf16 is False and config.max_steps == 2


def test_yaml12_booleans_stay_booleans_in_text_fields(tmp_path):
    """``fsdp: true`` (a ``str``-typed field that transformers also reads as a boolean) is
    True, as YAML 1.2 reads it; only YAML 1.1's yes/no/on/off keep their text."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"output_dir: {tmp_path}\nfsdp: true\nrun_name: no\n", encoding="utf-8")
    from polyalign.training.config import read_recipe
    settings, _ = read_recipe(recipe)
    assert settings["fsdp"] is True and settings["run_name"] == "no"
    assert parse_overrides(["--fsdp", "false"]) == {"fsdp": False}
    assert parse_overrides(["--save_strategy", "no"]) == {"save_strategy": "no"}
