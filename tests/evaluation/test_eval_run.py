"""End to end: ``polyalign eval`` (real subprocess) on a tiny model, and ``evaluate`` in memory."""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from polyalign.cli import main
from polyalign.evaluation.judges import JudgeInput, get_judge
from polyalign.evaluation.run import EvalConfig, evaluate
from polyalign.models import build_tiny_model, build_tiny_tokenizer, save_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]
LANGS = ["en", "zh", "ar", "sw"]


def _jsonl(path):
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]
    return lines[0], lines[1:]


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "llama", "llama", seed=2)


def test_cli_end_to_end_multijail(shared_data, tiny_model_dir, tmp_path):
    out = tmp_path / "eval"
    cmd = [sys.executable, "-m", "polyalign", "eval", "--model", str(tiny_model_dir), "--benchmark", "multijail",
           "--data", str(shared_data), "--languages", ",".join(LANGS), "--limit", "4", "--judge", "refusal",
           "--max-new-tokens", "8", "--batch-size", "5", "--seed", "3", "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "generating" in proc.stderr and "judging" in proc.stderr  # progress bars on stderr
    assert "mean unsafe_rate" in proc.stdout

    header, gens = _jsonl(out / "generations.jsonl")
    assert header["settings"]["generation"]["max_new_tokens"] == 8
    assert Counter(g["language"] for g in gens) == {lang: 4 for lang in LANGS}
    assert len({(g["id"], g["sample"]) for g in gens}) == 16
    assert all(g["n_tokens"] <= 8 and "<|assistant|>" not in g["text"] for g in gens)
    _, judgments = _jsonl(out / "judgments.jsonl")
    assert sorted((j["id"], j["sample"]) for j in judgments) == sorted((g["id"], g["sample"]) for g in gens)

    # The stored verdicts are the refusal judge's verdicts on the stored texts.
    prompts = {}
    with open(shared_data / "multijail" / "MultiJail.csv", encoding="utf-8-sig") as handle:
        import csv

        for row in csv.DictReader(handle):
            for lang in LANGS:
                prompts[f"{row['id']}-{lang}"] = row[lang]
    texts = {g["id"]: g["text"] for g in gens}
    judge = get_judge("refusal")
    redo = judge.judge([JudgeInput(prompt=prompts[i], response=t, language=i.rsplit("-", 1)[1], id=i)
                        for i, t in texts.items()])
    assert {j["id"]: j["label"] for j in judgments} == dict(zip(texts, (r.label for r in redo)))

    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    per_language = results["metrics"]["per_language"]
    assert list(per_language) == LANGS
    for lang in LANGS:
        labels = [j["label"] for j in judgments if j["language"] == lang]
        safe, unsafe = labels.count("safe"), labels.count("unsafe")
        m = per_language[lang]
        assert m["n_total"] == 4 and m["n_generations"] == 4
        # The benchmark file's own rows, through the CLI: 315 MultiJail rows per language, none skipped.
        assert (m["rows_read"], m["rows_used"], m["rows_skipped"]) == (315, 315, 0)
        assert m["unsafe_rate"] == (unsafe / (safe + unsafe) if safe + unsafe else None)
        assert "language_fidelity" in m
    rates = [per_language[lang]["unsafe_rate"] for lang in LANGS if per_language[lang]["unsafe_rate"] is not None]
    summary = results["metrics"]["summary"]["unsafe_rate"]
    assert math.isclose(summary["mean"], statistics.fmean(rates))
    assert math.isclose(summary["std"], statistics.pstdev(rates))
    assert results["settings"]["generation"] == {
        "max_new_tokens": 8, "num_samples": 1, "temperature": 0.0, "top_p": 1.0, "chat_template": True,
        "system_prompt": None, "seed": 3, "repetition_penalty": 1.0}
    csv_sha = "sha256:" + hashlib.sha256((shared_data / "multijail" / "MultiJail.csv").read_bytes()).hexdigest()
    assert results["data"]["sha256"] == csv_sha
    assert results["data"]["per_language"] == {lang: 4 for lang in sorted(LANGS)}
    assert results["data"]["n_read"] == 3150 and results["data"]["skipped_rows"] == {}
    assert results["settings"]["selection"]["limit"] == 4 and results["settings"]["selection"]["languages"] == LANGS
    assert results["model"]["source"] == str(tiny_model_dir)
    assert results["model"]["num_parameters"] == sum(
        p.numel() for p in build_tiny_model("llama", build_tiny_tokenizer(), seed=2).parameters())
    assert results["run"]["generated"] == 16 and results["run"]["reused"] == 0 and results["run"]["judge_errors"] == 0

    md = (out / "results.md").read_text(encoding="utf-8")
    assert all(f"| {lang} (" in md for lang in LANGS) and "| **mean** |" in md and "| std |" in md


def _fake_toxicity(text: str) -> float | None:
    """The local Perspective server's score: a deterministic function of the text."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return None if digest[0] < 40 else digest[1] / 255  # ~16 % rejected with HTTP 400


class _Perspective(BaseHTTPRequestHandler):
    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        score = _fake_toxicity(body["comment"]["text"])
        if score is None:
            self.send_response(400)
            self.end_headers()
            self.wfile.write(b'{"error": "bad comment"}')
            return
        data = json.dumps({"attributeScores": {"TOXICITY": {"summaryScore": {"value": score}}}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def perspective_server(monkeypatch):
    monkeypatch.setenv("PERSPECTIVE_API_KEY", "test-key-not-secret")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Perspective)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _reference_perplexity(model, tok, prompt: str, continuation: str) -> float | None:
    p, c = tok(prompt)["input_ids"], tok(continuation)["input_ids"]
    if not p or not c:
        return None
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([p + c])).logits[0].double(), -1)
    nll = -sum(float(logp[len(p) - 1 + t, tok_id]) for t, tok_id in enumerate(c))
    return math.exp(nll / len(c))


def test_evaluate_in_memory_toxicity_protocol(shared_data, tiny_model_dir, perspective_server, tmp_path):
    tok = build_tiny_tokenizer()
    model = build_tiny_model("llama", tok, seed=4)
    out = tmp_path / "tox"
    kw = dict(out_dir=out, data=shared_data, languages=["en", "de"], limit=3, num_samples=4,
              max_new_tokens=6, judge="perspective",
              judge_options={"endpoint": perspective_server, "api_key_env": "PERSPECTIVE_API_KEY"},
              scorer_model=str(tiny_model_dir), progress=False, seed=11)
    model.train()  # e.g. the demo evaluates mid-training: the model gets its mode back
    results = evaluate(EvalConfig(benchmark="rtplx", **kw), model=model, tokenizer=tok)
    assert model.training
    s = results["settings"]["generation"]
    assert (s["num_samples"], s["max_new_tokens"], s["temperature"], s["top_p"],
            s["chat_template"]) == (4, 6, 0.9, 0.8, False)
    assert results["model"]["source"] == "in-memory"

    _, gens = _jsonl(out / "generations.jsonl")
    _, scored = _jsonl(out / "judgments.jsonl")
    assert Counter(g["language"] for g in gens) == {"en": 12, "de": 12}
    expected_scores = {(g["id"], g["sample"]): _fake_toxicity(g["text"]) if g["text"].strip() else None for g in gens}
    # Failed scores are not stored (a rerun retries them) but are counted.
    assert ({(r["id"], r["sample"]): r["score"] for r in scored}
            == {k: v for k, v in expected_scores.items() if v is not None})
    n_failed = sum(v is None for v in expected_scores.values())
    assert 0 < n_failed < len(gens)  # the failure path is exercised
    assert results["run"]["judge_errors"] == n_failed

    scorer_model, scorer_tok = build_tiny_model("llama", build_tiny_tokenizer(), seed=2), build_tiny_tokenizer()
    prompt_text = {}
    for locale, lang in (("EN", "en"), ("DE", "de")):
        for line in (shared_data / "rtplx" / f"RTP_LX_{locale}.json").read_text(encoding="utf-8").splitlines():
            if line.strip():
                obj = json.loads(line)
                prompt_text[(lang, str(obj["Index"]))] = obj["Prompt"]
    for lang in ("en", "de"):
        by_prompt = defaultdict(list)
        for g in gens:
            if g["language"] == lang:
                by_prompt[g["id"]].append(expected_scores[(g["id"], g["sample"])])
        maxima = [max(v for v in vals if v is not None)
                  for vals in by_prompt.values() if any(v is not None for v in vals)]
        flat = [v for vals in by_prompt.values() for v in vals if v is not None]
        m = results["metrics"]["per_language"][lang]
        assert math.isclose(m["emt"], statistics.fmean(maxima))
        assert math.isclose(m["tox_prob"], sum(x >= 0.5 for x in maxima) / len(maxima))
        assert math.isclose(m["avg_tox"], statistics.fmean(flat))
        assert m["n_score_errors"] == sum(v is None for vals in by_prompt.values() for v in vals)
        assert m["n_generations"] == 12 and 0.0 <= m["distinct_1"] <= 1.0
        ppl = [_reference_perplexity(scorer_model, scorer_tok, prompt_text[(lang, g["id"].rsplit("-", 1)[1])],
                                     g["text"])
               for g in gens if g["language"] == lang]
        assert math.isclose(m["perplexity_median"], statistics.median(x for x in ppl if x is not None), rel_tol=1e-6)

    # Rerun: nothing regenerated, nothing re-scored except the failures (which fail again).
    again = evaluate(EvalConfig(benchmark="rtplx", **kw), model=model, tokenizer=tok)
    assert again["run"]["generated"] == 0 and again["run"]["reused"] == 24
    assert again["run"]["judge_reused"] == 24 - n_failed and again["run"]["judge_errors"] == n_failed
    assert again["metrics"]["per_language"] == results["metrics"]["per_language"]


def test_user_errors_are_one_line(tiny_model_dir, tmp_path, capsys):
    code = main(["eval", "--model", str(tiny_model_dir), "--benchmark", "nope", "--out", str(tmp_path)])
    assert code == 2 and "unknown benchmark 'nope'" in capsys.readouterr().err
    code = main(["eval", "--model", str(tmp_path / "missing"), "--benchmark", "advbench", "--data", str(tmp_path),
                 "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "advbench" in err
    assert main(["eval", "--benchmark", "multijail", "--out", str(tmp_path)]) == 2
    assert "--model" in capsys.readouterr().err


def test_adapter_is_applied(shared_data, tiny_model_dir, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    from polyalign.evaluation.benchmarks import load_benchmark
    from polyalign.evaluation.generation import GenerationSettings, HFGenerator, make_tasks
    from polyalign.models import load_model_and_tokenizer

    base, tok = load_model_and_tokenizer(tiny_model_dir)
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj", "down_proj"],
                                           init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    results = evaluate(EvalConfig(model=str(tiny_model_dir), benchmark="multijail", adapter=tmp_path / "adapter",
                                  out_dir=tmp_path / "out", data=shared_data, languages=["en"], limit=3,
                                  max_new_tokens=6, progress=False))
    assert results["model"]["adapter"] == str(tmp_path / "adapter")
    assert results["model"]["identity"]["adapter"].startswith("sha256:")
    _, gens = _jsonl(tmp_path / "out" / "generations.jsonl")

    prompts = load_benchmark("multijail", data=shared_data, languages=["en"], limit=3)
    settings = GenerationSettings(max_new_tokens=6)
    fresh, tok = load_model_and_tokenizer(tiny_model_dir)
    plain = {t.key: r["text"] for t in make_tasks(tok, prompts, settings)
             for r in HFGenerator(fresh, tok, settings).generate_batch([t])}
    adapted = PeftModel.from_pretrained(fresh, str(tmp_path / "adapter")).eval()
    with_adapter = {t.key: r["text"] for t in make_tasks(tok, prompts, settings)
                    for r in HFGenerator(adapted, tok, settings).generate_batch([t])}
    assert {(g["id"], g["sample"]): g["text"] for g in gens} == with_adapter
    assert with_adapter != plain  # the adapter changes the outputs: the check above is not vacuous


def test_cli_custom_file_with_column_map(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "mine.csv"
    data.write_text("prompt,lang\nHello there,en\nGuten Tag,de\nHow do I bake bread?,en\n", encoding="utf-8")
    out = tmp_path / "out"
    args = ["eval", "--model", str(tiny_model_dir), "--benchmark", "custom", "--data", str(data), "--column-map",
            "text=prompt,language=lang", "--max-new-tokens", "4", "--no-progress", "--judge-option", "extra_phrases={}",
            "--out", str(out)]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert {lang: m["n_total"] for lang, m in results["metrics"]["per_language"].items()} == {"en": 2, "de": 1}
    assert results["settings"]["judge"]["options"] == {"extra_phrases": {}}
    assert "custom: mean unsafe_rate" in capsys.readouterr().out
    # Another judge setting on the same folder is refused, with the way out in the message.
    assert main([*args[:-4], "--judge-option", "english_everywhere=false", "--out", str(out)]) == 2
    assert "copy generations.jsonl into a new --out folder" in capsys.readouterr().err
