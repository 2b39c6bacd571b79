"""``polyalign analyze ...`` end to end on a saved tiny checkpoint and self-written data."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from polyalign.analysis.retrieval import bilingual_retrieval
from polyalign.analysis.stats import correlate
from polyalign.cli import main
from polyalign.models import load_model_and_tokenizer, save_tiny_checkpoint

PARALLEL = {
    "en": ["The weather is nice today.", "I like reading books.", "Where is the station?", "Thank you!"],
    "de": ["Das Wetter ist heute schön.", "Ich lese gerne Bücher.", "Wo ist der Bahnhof?", "Danke!"],
    "zh": ["今天天气很好。", "我喜欢读书。", "车站在哪里？", "谢谢！"],
}


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "llama", arch="llama", seed=4)


@pytest.fixture()
def parallel_dir(tmp_path):
    folder = tmp_path / "parallel"
    folder.mkdir()
    for lang, lines in PARALLEL.items():
        (folder / f"sent_{lang}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def test_retrieval_cli_matches_library_and_correlates(ckpt, parallel_dir, tmp_path, capsys):
    transfer = tmp_path / "transfer.json"
    transfer.write_text(json.dumps({"de": 0.5, "zh": 0.1, "ko": 0.3}), encoding="utf-8")
    out = tmp_path / "r.json"
    rc = main(["analyze", "retrieval", "--model", str(ckpt), "--data", str(parallel_dir), "--batch-size", "2",
               "--transfer", str(transfer), "-o", str(out)])
    assert rc == 0 and "wrote" in capsys.readouterr().out
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["analysis"] == "retrieval" and got["data"]["fingerprint"].startswith("sha256:")
    model, tok = load_model_and_tokenizer(ckpt)
    ref = bilingual_retrieval(model, tok, PARALLEL).to_dict()
    for lang in ("de", "zh"):
        for metric, value in ref["averages"][lang].items():
            assert got["result"]["averages"][lang][metric] == pytest.approx(value, abs=1e-6)
    corr = got["result"]["correlation"]
    scores = {lang: ref["averages"][lang]["mean_aligned_cosine"] for lang in ("de", "zh")}
    expected = correlate(scores, {"de": 0.5, "zh": 0.1, "ko": 0.3})
    assert corr["n"] == 2 and corr["missing"] == ["ko"] and corr["score"] == "mean_aligned_cosine"
    assert corr["pearson"] == pytest.approx(expected["pearson"])


def test_collinearity_cli_with_subsets(ckpt, parallel_dir, tmp_path):
    out = tmp_path / "c.json"
    rc = main(["analyze", "collinearity", "--model", str(ckpt), "--data", str(parallel_dir), "--subset", "en-zh=en,zh",
               "--layers", "0,-1", "-o", str(out)])
    assert rc == 0
    got = json.loads(out.read_text(encoding="utf-8"))["result"]
    assert got["layers"] == [0, 2]
    assert sorted(got["subsets"]["all"]["languages"]) == ["de", "en", "zh"]
    assert got["subsets"]["en-zh"]["n_prompts"] == 4
    assert all(1 / 3 - 1e-9 <= v <= 1 + 1e-9 for v in got["subsets"]["all"]["rank1_share"])


def _pairs_file(tmp_path):
    rows = [
        {"id": "a", "language": "en", "prompt": "How do I bake bread?", "chosen": "Mix flour and water.",
         "rejected": "No."},
        {"id": "b", "language": "en", "prompt": "Tell me a joke", "chosen": "Why not!", "rejected": "I cannot help."},
        {"id": "c", "language": "zh", "prompt": "怎么做面包？", "chosen": "把面粉和水混合。", "rejected": "不。"},
        {"id": "d", "language": "de", "prompt": "Wie backe ich Brot?", "chosen": "Mehl und Wasser mischen.",
         "rejected": "Nein."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reward_gap_cli_with_results_correlation(ckpt, tmp_path):
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"metrics": {"per_language": {"en": {"asr": 0.1}, "zh": {"asr": 0.6},
                                                                "de": {"asr": 0.3}}}}))
    out = tmp_path / "g.json"
    rc = main(["analyze", "reward-gap", "--model", str(ckpt), "--data", str(_pairs_file(tmp_path)),
               "--results", str(results), "--languages", "en,zh,de", "-o", str(out)])
    assert rc == 0
    got = json.loads(out.read_text(encoding="utf-8"))
    assert got["data"]["format"] == "trl"
    res = got["result"]
    assert res["counts"]["pairs_scored"] == 4 and res["per_language"]["en"]["n"] == 2
    assert res["correlation"]["n"] == 3 and res["correlation"]["metric"] == "asr"
    gaps = [row["gap"] for row in res["pairs"] if row["language"] == "en"]
    assert res["per_language"]["en"]["mean_gap"] == pytest.approx(sum(gaps) / 2)


def test_neurons_cli(ckpt, tmp_path):
    probe = tmp_path / "probe.jsonl"
    rows = [{"text": f"you are a plant plant {i}", "label": 1} for i in range(6)]
    rows += [{"text": f"the weather is nice {i}", "label": 0} for i in range(6)]
    probe.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    texts = tmp_path / "texts.jsonl"
    prompts = [{"id": f"{lang}{i}", "language": lang, "text": t, "benchmark": "custom"}
               for lang, lines in PARALLEL.items() for i, t in enumerate(lines)]
    texts.write_text("".join(json.dumps({"type": "eval_prompt", **p}, ensure_ascii=False) + "\n" for p in prompts),
                     encoding="utf-8")
    out = tmp_path / "n.json"
    rc = main(["analyze", "neurons", "--model", str(ckpt), "--probe-data", str(probe), "--probe-method", "mean_diff",
               "--texts", str(texts), "--after", str(ckpt), "--top-k", "20", "--top-tokens", "3", "-o", str(out)])
    assert rc == 0
    res = json.loads(out.read_text(encoding="utf-8"))["result"]
    assert res["n_ranked"] == 20 and res["n_kept"] == len(res["neurons"]) > 0
    assert all(n["mean_activation"] > 0 and len(n["top_tokens"]) == 3 for n in res["neurons"])
    cosines = [n["cosine"] for n in res["neurons"]]
    assert cosines == sorted(cosines, reverse=True)
    assert set(res["activations"]) == {"en", "de", "zh"}
    assert all(v["change"] == 0.0 for v in res["activations"].values())  # same model after


def test_user_errors_exit_2(ckpt, tmp_path, capsys):
    bad = tmp_path / "probe.jsonl"
    bad.write_text('{"text": "x", "label": 3}\n', encoding="utf-8")
    rc = main(["analyze", "neurons", "--model", str(ckpt), "--probe-data", str(bad), "-o", str(tmp_path / "o.json")])
    err = capsys.readouterr().err
    assert rc == 2 and "probe.jsonl:1" in err and "label" in err
    rc = main(["analyze", "retrieval", "--model", str(tmp_path / "nope"), "--data", str(tmp_path),
               "-o", str(tmp_path / "o.json")])
    assert rc == 2
    assert not (tmp_path / "o.json").exists()


def test_real_subprocess(ckpt, parallel_dir, tmp_path):
    out = tmp_path / "r.json"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, "-m", "polyalign", "analyze", "retrieval", "--model", str(ckpt), "--data", str(parallel_dir),
         "--languages", "zh", "--layers", "-1", "-o", str(out)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text(encoding="utf-8"))["result"]
    assert list(got["averages"]) == ["zh"] and got["layers"] == [2]
