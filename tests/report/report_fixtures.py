"""Two small, realistic eval run folders written by hand (numbers chosen for the tests).

Imported by the tests as ``report_fixtures`` (unique name: no clash with tests/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

LANGS = ["en", "zh", "ja", "ko", "ar", "bn", "sw"]
BASE_UNSAFE = dict(zip(LANGS + ["it"], [0.05, 0.20, 0.25, 0.30, 0.40, 0.55, 0.60, 0.33]))
MPO_UNSAFE = dict(zip(LANGS, [0.08, 0.10, 0.12, 0.15, 0.20, 0.25, 0.30]))
BASE_ACC = dict(zip(LANGS + ["it"], [0.72, 0.61, 0.58, 0.55, 0.49, 0.41, 0.38, 0.60]))
MPO_ACC = dict(zip(LANGS, [0.70, 0.60, 0.57, 0.55, 0.48, 0.40, 0.36]))
REFERENCE_GAP = dict(zip(LANGS, [0.90, 0.35, 0.30, 0.25, 0.15, 0.05, 0.0]))
POLICY_GAP = dict(zip(LANGS, [0.88, 0.70, 0.65, 0.62, 0.50, 0.42, 0.33]))
LAYERS = list(range(7))


def retrieval_curve(k: int) -> tuple[list[float], list[float]]:
    """Accuracy per layer for the k-th non-pivot language: rises, then falls at the top."""
    peak = 0.95 - 0.1 * k
    up = [round(min(peak, 0.1 + 0.2 * i) if i < 5 else peak - 0.1 * (i - 4), 3) for i in LAYERS]
    down = [round(max(0.0, v - 0.05), 3) for v in up]
    return up, down


def _safety_row(unsafe: float, acc: float, n: int = 315) -> dict:
    n_unsafe = round(unsafe * n)
    return {"n": n, "unsafe_rate": unsafe, "safety_rate": 1 - unsafe, "n_unsafe": n_unsafe, "n_safe": n - n_unsafe,
            "invalid": 0, "errors": 0, "accuracy": acc, "language_fidelity": 0.9, "my_custom_score": 10 * unsafe}


def results_json(unsafe: dict, acc: dict, model: str, extra: dict | None = None) -> dict:
    per_language = {lang: _safety_row(unsafe[lang], acc[lang]) for lang in unsafe}
    for lang, values in (extra or {}).items():
        per_language[lang].update(values)
    return {"settings": {"benchmark": "multijail", "judge": "llama-guard-3"},
            "model": {"path": model, "fingerprint": "sha256:" + "0" * 64},
            "data": {"path": "multijail.csv", "fingerprint": "sha256:" + "1" * 64},
            "metrics": {"per_language": per_language, "summary": {}}}


def write_runs(tmp_path: Path) -> tuple[Path, Path]:
    """``(base, mpo)`` run folders; the MPO one also has reward_gap.json and retrieval.json."""
    base, mpo = tmp_path / "runs" / "base", tmp_path / "runs" / "mpo"
    base.mkdir(parents=True)
    mpo.mkdir(parents=True)
    # sw's fidelity undefined; a non-numeric metric in one language (must be noted, not tabulated).
    extra = {"sw": {"language_fidelity": None}, "en": {"judge_version": "v3"}}
    (base / "results.json").write_text(json.dumps(results_json(BASE_UNSAFE, BASE_ACC, "models/base", extra), indent=2))
    (base / "generations.jsonl").write_text("")  # an extra file the report ignores
    (base / "notes.txt").write_text("unrelated")
    (mpo / "results.json").write_text(json.dumps(results_json(MPO_UNSAFE, MPO_ACC, "models/mpo"), indent=2))
    gaps = {lang: {"policy_gap": POLICY_GAP[lang], "reference_gap": REFERENCE_GAP[lang], "n": 100} for lang in LANGS}
    (mpo / "reward_gap.json").write_text(json.dumps({"per_language": gaps}))
    per_language = {}
    for k, lang in enumerate(LANGS[1:]):
        up, down = retrieval_curve(k)
        rows = [{"layer": i, "acc_pivot_to_x": a, "acc_x_to_pivot": b, "mean_aligned_cosine": 0.5 + 0.05 * i}
                for i, a, b in zip(LAYERS, up, down)]
        per_language[lang] = {"per_layer": rows, "mean_acc": sum(up + down) / 14, "mean_cos": 0.65}
    (mpo / "retrieval.json").write_text(json.dumps({"pivot": "en", "per_language": per_language}))
    return base, mpo
