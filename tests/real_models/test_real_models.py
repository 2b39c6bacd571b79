"""Real-model tier: SmolLM2-135M-Instruct and Gemma-3-270M (base) through every command.

Per model: the converted checkpoint is a real language model (perplexity bounds per language
that a random, a weight-shuffled and a typically mis-converted copy all fail; SmolLM2 answers a
factual question under greedy decoding), then one ``polyalign train`` step each of DPO, MPO
and DPO + MLC at short lengths, ``polyalign eval`` on 4 MultiJail prompts in 3 languages (chat
template for SmolLM2, plain continuation for the Gemma-3 base model), ``polyalign analyze
retrieval`` on 20 sentences x 3 languages and ``polyalign report``. Every command takes the
model by its known name. Run with ``make test-real`` (``--durations=0`` prints each step's time).
"""

from __future__ import annotations

import gc
import json
import shutil
from pathlib import Path

import pytest
import torch

from polyalign.cli import main
from polyalign.models import load_model_and_tokenizer, resolve_model_source
from ppl_helpers import (
    SENTENCES,
    norm_plus_one_model,
    perplexity,
    random_model,
    shuffled_model,
    unpermuted_qk_model,
)

# Upper bounds on perplexity per language. SmolLM2: about the geometric middle between the
# converted model and a copy with llama.cpp's Q/K permutation left in (measured en 11.7 vs 29.5,
# fr 54 vs 178, de 111 vs 305). Gemma-3: twice the converted model's (measured en 10.1, fr 15.5,
# de 15.5, es 29.0, zh 72.2, ru 27.6); with the norm +1 left in it is above 10^8. Random copies
# are above 50,000 (SmolLM2) and 200,000 (Gemma-3), weight-shuffled ones far higher.
BOUNDS = {
    "smollm2-135m-instruct": {"en": 18.0, "fr": 95.0, "de": 180.0},
    "gemma-3-270m": {"en": 20.0, "fr": 30.0, "de": 30.0, "es": 60.0, "zh": 150.0, "ru": 55.0},
}
MISCONVERTED = {"smollm2-135m-instruct": unpermuted_qk_model, "gemma-3-270m": norm_plus_one_model}
EVAL_LANGUAGES = ["en", "zh", "it"]
pytestmark = pytest.mark.real_model
RETRIEVAL_LANGUAGES = ["en", "de", "zh"]
RETRIEVAL_FLOOR = {"smollm2-135m-instruct": 0.3, "gemma-3-270m": 0.6}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("real-tier")


def _run(args: list[str]) -> None:
    code = main(args)
    assert code == 0, f"polyalign {' '.join(args)} exited {code}"


def test_perplexity_bounds_reject_broken_models(real_model, measured):
    model, tokenizer = load_model_and_tokenizer(real_model)
    bounds = BOUNDS[real_model]
    good = {lang: perplexity(model, tokenizer, SENTENCES[lang]) for lang in bounds}
    record = measured.setdefault(real_model, {})
    record["perplexity"] = {"converted": good, "bounds": bounds}
    print(f"\n[real-model tier] {real_model} perplexity: {json.dumps({k: round(v, 1) for k, v in good.items()})}")
    for lang, bound in bounds.items():
        assert good[lang] < bound, (lang, good[lang], bound)
    for label, make in (("random", random_model), ("shuffled", shuffled_model),
                        ("misconverted", MISCONVERTED[real_model])):
        broken = make(model)
        bad = {lang: perplexity(broken, tokenizer, SENTENCES[lang]) for lang in bounds}
        record["perplexity"][label] = bad
        print(f"[real-model tier] {real_model} {label}: {json.dumps({k: round(v, 1) for k, v in bad.items()})}")
        for lang, bound in bounds.items():
            assert bad[lang] > bound, (label, lang, bad[lang], bound)
        del broken
        gc.collect()  # one broken 1 GB copy at a time


def test_smollm2_answers_a_factual_question(real_model, measured):
    if real_model != "smollm2-135m-instruct":
        pytest.skip("only the instruct model answers chat questions")
    model, tokenizer = load_model_and_tokenizer(real_model)
    assert "You are a helpful AI assistant named SmolLM" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False)  # the default system prompt of its template
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(f"\n[real-model tier] {real_model}: {answer!r}")
    measured.setdefault(real_model, {})["factual_answer"] = {"question": "What is the capital of France?",
                                                             "answer": answer, "max_new_tokens": 16}
    assert "Paris" in answer


@pytest.fixture(scope="module")
def train_data(workdir, shared_data):
    """4 MPO rows spread over the file; the same rows as TRL pairs (DPO); 2 MLC rows (DPO + MLC)."""
    rows = json.loads((shared_data / "mpo" / "llama_mpo_data.json").read_text(encoding="utf-8"))
    mpo = workdir / "mpo4.json"
    mpo.write_text(json.dumps(rows[::150][:4], ensure_ascii=False), encoding="utf-8")
    trl = workdir / "mpo4.trl.jsonl"
    _run(["data", "convert", str(mpo), "--to", "trl", "-o", str(trl)])
    return {"mpo": mpo, "dpo": trl, "mlc": shared_data / "mlc" / "pku_saferlhf_safety_test.jsonl"}


@pytest.mark.parametrize("method", ["dpo", "mpo", "dpo+mlc"])
def test_one_training_step(real_model, method, train_data, workdir):
    out = workdir / real_model / method.replace("+", "_")
    base = "mpo" if method == "mpo" else "dpo"
    args = ["train", "--config", "recipes/tiny_cpu_mpo.yaml", "--method", base,
            "--model_name_or_path", real_model, "--train_file", str(train_data[method.split("+")[-1]]),
            "--output_dir", str(out), "--reference_cache_dir", str(workdir / "refcache"),
            "--max_examples", "2", "--max_steps", "1", "--per_device_train_batch_size", "2",
            "--max_length", "64", "--max_prompt_length", "32", "--learning_rate", "1e-5", "--logging_steps", "1"]
    if method == "dpo+mlc":
        args += ["--mlc_weight", "0.8", "--mlc_every", "1", "--mlc_dim", "64", "--detect_language", "false"]
    _run(args)
    saved = out / "final"
    trained, _ = load_model_and_tokenizer(saved)
    start, _ = load_model_and_tokenizer(real_model)
    changed = [name for name, p in trained.state_dict().items() if not torch.equal(p, start.state_dict()[name])]
    assert changed, "one optimiser step changed no weight"
    assert type(trained) is type(start)
    if method == "dpo+mlc":  # the MLC head is saved beside the model only when the MLC term ran
        assert (saved / "mlc_extractor" / "model.safetensors").is_file()
    shutil.rmtree(out)  # 0.5-1 GB of weights per run


def test_eval_multijail(real_model, workdir, shared_data, measured):
    out = workdir / real_model / "eval"
    template = ["--chat-template"] if real_model == "smollm2-135m-instruct" else ["--no-chat-template"]
    _run(["eval", "--model", real_model, "--benchmark", "multijail", "--data", str(shared_data),
          "--languages", ",".join(EVAL_LANGUAGES), "--limit", "4", "--max-new-tokens", "24", "--judge", "refusal",
          "--no-progress", "--out", str(out), *template])
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert sorted(results["metrics"]["per_language"]) == sorted(EVAL_LANGUAGES)
    lines = (out / "generations.jsonl").read_text(encoding="utf-8").splitlines()
    rows = [row for row in map(json.loads, lines) if "_store" not in row]  # the store's header line
    assert len(rows) == 4 * len(EVAL_LANGUAGES)
    assert sorted({row["language"] for row in rows}) == sorted(EVAL_LANGUAGES)
    assert sum(bool(row["text"].strip()) for row in rows) >= len(rows) - 2
    per_language = results["metrics"]["per_language"]
    measured.setdefault(real_model, {})["multijail"] = {
        "judge": "refusal", "max_new_tokens": 24, "chat_template": real_model == "smollm2-135m-instruct",
        "per_language": {lang: {k: per_language[lang].get(k) for k in ("n_total", "unsafe_rate", "refusal_rate")}
                         for lang in EVAL_LANGUAGES}}


def test_analyze_retrieval(real_model, workdir, shared_data, measured):
    data = workdir / "parallel20"
    if not data.exists():
        data.mkdir()
        for lang in RETRIEVAL_LANGUAGES:
            source = shared_data / "detox_parallel" / f"dpo_toxicity_pairwise_{lang}_200.jsonl"
            lines = source.read_text(encoding="utf-8").splitlines()[:20]
            (data / f"dpo_toxicity_pairwise_{lang}_20.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = workdir / real_model / "eval" / "retrieval.json"
    _run(["analyze", "retrieval", "--model", real_model, "--data", str(data), "--batch-size", "20", "-o", str(out)])
    result = json.loads(out.read_text(encoding="utf-8"))["result"]
    assert result["n_sentences"] == 20 and sorted(result["per_layer"]) == sorted(set(RETRIEVAL_LANGUAGES) - {"en"})
    # Translations retrieved well above chance (1 in 20) at the best layer (measured: SmolLM2 0.45,
    # English-centric; Gemma-3 0.90). A sanity check; the perplexity bounds are the ones with teeth.
    best = max(max(result["per_layer"][lang]["acc_x_to_pivot"]) for lang in result["per_layer"])
    print(f"\n[real-model tier] {real_model} retrieval best acc_x_to_pivot: {best:.2f}")
    measured.setdefault(real_model, {})["retrieval"] = {
        "n_sentences": result["n_sentences"], "pivot": "en",
        "best_layer_acc_x_to_pivot": {lang: max(result["per_layer"][lang]["acc_x_to_pivot"])
                                      for lang in result["per_layer"]}}
    assert best >= RETRIEVAL_FLOOR[real_model]


def test_report(real_model, workdir):
    run = workdir / real_model / "eval"
    out = workdir / real_model / "report"
    _run(["report", str(run), "-o", str(out), "--names", real_model])
    html = (out / "report.html").read_text(encoding="utf-8")
    assert real_model in html and all(lang in html for lang in EVAL_LANGUAGES)
    assert (out / "report.md").is_file()


def test_name_resolves_to_the_cached_folder(real_model, measured):
    folder = resolve_model_source(real_model)
    model, tokenizer = load_model_and_tokenizer(real_model)
    config = model.config.get_text_config()
    embedding = model.get_input_embeddings().weight
    files = [p for p in Path(folder).rglob("*") if p.is_file()]
    measured.setdefault(real_model, {})["architecture"] = {
        "model_type": config.model_type, "parameters": sum(p.numel() for p in model.parameters()),
        "embedding_parameters": embedding.numel(), "vocab_size": embedding.shape[0],
        "tied_embeddings": model.get_output_embeddings().weight.data_ptr() == embedding.data_ptr(),
        "layers": config.num_hidden_layers, "layer_types": sorted(set(getattr(config, "layer_types", None) or [])),
        "sliding_layers": sum(t == "sliding_attention" for t in (getattr(config, "layer_types", None) or [])),
        "chat_template": bool(getattr(tokenizer, "chat_template", None)),
        "folder_bytes": sum(p.stat().st_size for p in files)}
    assert folder.endswith(f"models/{real_model}")
    notice = open(f"{folder}/NOTICE", encoding="utf-8").read()
    assert ("Gemma Terms of Use" in notice) == real_model.startswith("gemma")
