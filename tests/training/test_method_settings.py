"""Every method/setting pair of the training config: a setting the method does not read is refused
(a one-line error naming the recipe's file, line and field), never silently ignored."""

from __future__ import annotations

import pytest
import yaml

from polyalign.errors import UserError
from polyalign.training.config import METHODS, load_config

# Which methods read each setting, from what polyalign.training.objective's step functions use
# (written out here, not imported, so a change to the config's table must be made twice).
READ_BY = {
    "beta": {"dpo", "simpo", "orpo"},
    "loss_type": {"dpo"},
    "label_smoothing": {"dpo"},
    "simpo_gamma": {"simpo"},
    "nll_weight": {"dpo", "simpo", "orpo", "sft"},
    "mpo_beta": {"mpo"},
    "retain_alpha": {"mpo"},
    "retain_pooling": {"mpo"},
    "dominant_language": {"mpo"},
    "ref_model_name_or_path": {"dpo", "mpo"},
}
# A value other than the default for each (YAML text).
VALUE = {"beta": "0.3", "loss_type": "hinge", "label_smoothing": "0.1", "simpo_gamma": "1.0", "nll_weight": "0.5",
         "mpo_beta": "1.5", "retain_alpha": "2.0", "retain_pooling": "unmasked_mean", "dominant_language": "zh",
         "ref_model_name_or_path": "some/reference"}
MLC_ONLY = {"mlc_tau": "0.3", "mlc_every": "1", "mlc_layer": "2", "mlc_dim": "64", "mlc_scale": "paper",
            "mlc_languages": "[en, zh]", "variants_file": "variants.jsonl", "variants_format": "canonical"}


def _recipe(tmp_path, body: str):
    path = tmp_path / "recipe.yaml"
    # per_device batch 1: unmasked_mean is refused above it (tested below)
    path.write_text(f"output_dir: {tmp_path / 'out'}\nper_device_train_batch_size: 1\n{body}")
    return path


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("setting", sorted(READ_BY))
def test_a_setting_the_method_does_not_read_is_refused(tmp_path, method, setting):
    path = _recipe(tmp_path, f"method: {method}\n{setting}: {VALUE[setting]}\n")
    if method in READ_BY[setting]:
        assert getattr(load_config(path), setting) == yaml.safe_load(VALUE[setting])
        return
    with pytest.raises(UserError) as err:
        load_config(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 4, setting)
    assert f"method {method} does not use this setting" in err.value.message


def test_the_table_covers_every_method_and_the_defaults_pass(tmp_path):
    assert set(METHODS) == {"dpo", "simpo", "orpo", "sft", "mpo"}
    for method in METHODS:  # defaults (the tiny MPO recipe's values) under every method
        load_config(_recipe(tmp_path, f"method: {method}\nmpo_beta: 1.0\nretain_alpha: 1.0\nbeta: 0.1\n"))


@pytest.mark.parametrize("setting", sorted(MLC_ONLY))
def test_mlc_settings_need_the_mlc_term(tmp_path, setting):
    path = _recipe(tmp_path, f"method: dpo\n{setting}: {MLC_ONLY[setting]}\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (4, setting)
    assert "only used by the MLC term" in err.value.message
    load_config(_recipe(tmp_path, f"method: dpo\nmlc_weight: 0.8\n{setting}: {MLC_ONLY[setting]}\n"))


@pytest.mark.parametrize("loss_type", ["hinge", "ipo"])
def test_label_smoothing_is_refused_where_the_dpo_loss_ignores_it(tmp_path, loss_type):
    path = _recipe(tmp_path, f"method: dpo\nloss_type: {loss_type}\nlabel_smoothing: 0.1\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (5, "label_smoothing")
    for used in ("sigmoid", "robust"):
        assert load_config(_recipe(tmp_path, f"method: dpo\nloss_type: {used}\nlabel_smoothing: 0.1\n"))


def test_unmasked_pooling_is_refused_above_one_pair_per_device_batch(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(f"output_dir: {tmp_path}\nmethod: mpo\nretain_pooling: unmasked_mean\n"
                    "per_device_train_batch_size: 2\n")
    with pytest.raises(UserError) as err:
        load_config(path)
    assert (err.value.line, err.value.field) == (3, "retain_pooling")
    assert "per_device_train_batch_size: 1" in err.value.message
    ok = {"per_device_train_batch_size": 1}
    assert load_config(path, ok).retain_pooling == "unmasked_mean"
    # evaluation batches pool the same way: refused with an eval file unless they hold one pair too
    with pytest.raises(UserError, match="per_device_eval_batch_size: 1"):
        load_config(path, {**ok, "eval_file": "eval.json", "per_device_eval_batch_size": 4})
    assert load_config(path, {**ok, "eval_file": "eval.json", "per_device_eval_batch_size": 1})
    assert load_config(path, {"per_device_train_batch_size": 4, "retain_pooling": "masked_mean"})
