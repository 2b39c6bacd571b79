"""Training configurations of the study's methods, all from the recipe's one ``train:`` section.

======================  ===================  =====================  =========================
method                  starts from          data                   objective
======================  ===================  =====================  =========================
``dpo_en``              the base model       100 English pairs      DPO + NLL (nll_weight)
``dpo_mlc``             the base model       the same, with en + 6  DPO + NLL + MLC term
                                             prompt variants
``mpo``                 ``dpo_en`` (seed s)  target pairs with      MPO (reference = start)
                                             their English pair
``dpo_target``          ``dpo_en`` (seed s)  the same target pairs  DPO + NLL (reference = start)
======================  ===================  =====================  =========================

Full fine-tuning: before the first step the policy is its own reference, so MPO's and
target DPO's reference is the English-DPO model they start from (issue 17). The MLC term
is switched off for every method but ``dpo_mlc``; the NLL weight applies to the DPO
methods only (MPO has its own retain term).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DATA_FILE = {"dpo_en": "dpo_en.jsonl", "dpo_mlc": "mlc.jsonl", "mpo": "mpo.jsonl", "dpo_target": "target.jsonl"}


def method_config(method: str, *, train: dict[str, Any], base_model: str, dpo_en_model: str | None, data_dir: Path,
                  output_dir: Path, seed: int, cache_dir: Path) -> Any:
    """The :class:`~polyalign.training.config.PolyalignConfig` of one method and seed."""
    from polyalign.training.config import load_config

    values = dict(train)
    mlc = {k: values.pop(k) for k in list(values) if k.startswith("mlc_")}
    nll = values.pop("nll_weight", None)
    values.update(
        method="mpo" if method == "mpo" else "dpo",
        model_name_or_path=dpo_en_model if method in ("mpo", "dpo_target") else base_model,
        train_file=str(data_dir / DATA_FILE[method]), train_format="canonical", detect_language=False,
        dominant_language="en", output_dir=str(output_dir), seed=seed, data_seed=seed,
        reference_cache_dir=str(cache_dir), report_to=[], save_strategy="no",
        mlc_weight=mlc.get("mlc_weight", 0.0) if method == "dpo_mlc" else 0.0,
    )
    if method == "dpo_mlc":
        values.update({k: v for k, v in mlc.items() if k != "mlc_weight"})
    if method != "mpo" and nll is not None:
        values["nll_weight"] = nll
    return load_config(None, values)


def train_method(config: Any) -> dict[str, Any]:
    """Train and return what the study records: where the model is, loss, steps, data counts."""
    import gc

    from polyalign.training.run import train

    info = train(config)
    gc.collect()
    history = [row for row in info.get("log_history", []) if "loss" in row]
    return {"saved_to": info["saved_to"], "method": config.method, "train_loss": info["metrics"].get("train_loss"),
            "steps": history[-1].get("step") if history else None,
            "first_loss": history[0]["loss"] if history else None,
            "last_loss": history[-1]["loss"] if history else None,
            "data": {name: {"records": d.get("records"), "skipped": {**d.get("read_skipped", {}),
                                                                     **d.get("tokenize", {}).get("skipped", {})}}
                     for name, d in info["data"].items()}}
