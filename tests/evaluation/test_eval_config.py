"""``EvalConfig``: YAML loading (types, unknown keys with file/line/field), flags over the file,
the CLI and the Python API giving the same config, a YAML round trip, and the per-kind table."""

from __future__ import annotations

import dataclasses
import json

import pytest

from polyalign.cli import build_parser, main
from polyalign.cli.eval import eval_config
from polyalign.errors import UserError
from polyalign.evaluation.benchmarks import get_benchmark
from polyalign.evaluation.config import EvalConfig, load_eval_config
from polyalign.evaluation.kinds import KINDS, SAFETY, TOXICITY, get_kind
from polyalign.evaluation.run import evaluate
from polyalign.models import save_tiny_checkpoint


def _write(tmp_path, text: str, name: str = "eval.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _cli(argv: list[str]) -> EvalConfig:
    return eval_config(build_parser().parse_args(["eval", *argv]))


def test_yaml_values_are_typed_and_text_stays_text(tmp_path):
    path = _write(tmp_path, "model: m\nbenchmark: multijail\nout_dir: o\nlanguage: no\nlanguages: [no, sv]\n"
                            "limit: 3\ntemperature: 1\nchat_template: false\nsuites: safety,utility\n"
                            "utility_tasks: [a.yaml]\njudge_options: {threshold: 0.5, extra_phrases: {sw: [x]}}\n"
                            "dtype: float16\nsystem_prompt: 'null'\n")
    c = load_eval_config(path)
    # YAML 1.1 would read `no` as False: a language code stays text, in a list too.
    assert c.language == "no" and c.languages == ("no", "sv")
    assert c.limit == 3 and c.temperature == 1.0 and isinstance(c.temperature, float) and c.chat_template is False
    assert c.suites == ("safety", "utility") and c.utility_tasks == ("a.yaml",)
    assert c.judge_options == {"threshold": 0.5, "extra_phrases": {"sw": ["x"]}}
    assert c.dtype == "float16" and c.system_prompt == "null"  # quoted: the text, not None
    assert c.seed == 0 and c.judge_batch_size == 32 and c.backend == "hf"  # defaults for what the file leaves out


def test_unknown_key_names_file_line_and_field(tmp_path):
    path = _write(tmp_path, "model: m\nbenchmark: multijail\n\nmax_new_token: 8\n")
    with pytest.raises(UserError) as err:
        load_eval_config(path)
    assert (err.value.file, err.value.line, err.value.field) == (str(path), 4, "max_new_token")
    assert "did you mean 'max_new_tokens'" in err.value.message
    # through the CLI: one line on stderr naming the same, exit 2
    assert main(["eval", "--config", str(path)]) == 2


def test_bad_values_name_file_line_and_field(tmp_path):
    for text, line, field, message in [
        ("model: m\nlimit: three\n", 2, "limit", "whole number"),
        ("seed: 1\nlimit: 0\n", 2, "limit", "at least 1"),  # checked by EvalConfig, located in the file
        ("backend: tpu\n", 1, "backend", "unknown backend"),
        ("suites: [safety, fun]\n", 1, "suites", "unknown suite"),
        ("progress: maybe\n", 1, "progress", "true or false"),
        ("column_map: [text]\n", 1, "column_map", "mapping"),
        ("model: m\ncolumn_map: {text: [a, b]}\n", 2, "column_map", "field names to column names"),
    ]:
        path = _write(tmp_path, text)
        with pytest.raises(UserError, match=message) as err:
            load_eval_config(path)
        assert (err.value.file, err.value.line, err.value.field) == (str(path), line, field), text
    with pytest.raises(UserError, match="mapping of setting") as err:
        load_eval_config(_write(tmp_path, "- model\n"))
    assert err.value.line == 1


def test_flags_override_the_file(tmp_path, capsys):
    path = _write(tmp_path, "model: from-file\nbenchmark: multijail\nout_dir: o\nlimit: 3\nseed: 7\n"
                            "trust_remote_code: false\nprogress: true\njudge_options: {a: 1}\n")
    c = _cli(["--config", str(path), "--limit", "5", "--no-progress", "--judge-option", "b=2"])
    assert c.limit == 5  # a flag given replaces the file's value
    assert c.seed == 7 and c.model == "from-file"  # a flag not given leaves it (argparse defaults do not win)
    assert c.progress is False and c.judge_options == {"b": 2}  # a flag replaces the whole value
    assert c.backend == "hf" and c.judge_batch_size == 32  # neither: the EvalConfig default
    assert _cli(["--config", str(path)]) == load_eval_config(path)
    assert _cli(["--config", str(path), "--seed", "0"]).seed == 0  # an explicit default still wins over the file
    # A bad flag value names the command line and the flag, not the file.
    with pytest.raises(UserError) as err:
        _cli(["--config", str(path), "--utility-limit", "0"])
    assert (err.value.file, err.value.field) == ("<command line>", "--utility-limit")
    # Required settings may come from either place.
    no_model = _write(tmp_path, "benchmark: multijail\nout_dir: o\n", "nomodel.yaml")
    assert main(["eval", "--config", str(no_model)]) == 2 and "--model" in capsys.readouterr().err
    assert _cli(["--config", str(no_model), "--model", "m"]).model == "m"


def test_cli_and_python_api_give_the_same_config(tmp_path):
    argv = ["--model", "m", "--adapter", "ad", "--benchmark", "custom", "--data", "d.csv", "--languages", "en,sw",
            "--categories", "crime", "--limit", "4", "--seed", "3", "--column-map", "text=q,language=lang",
            "--column-map", "source_id=sid", "--language", "en", "--judge", "refusal,openai", "--judge-option",
            "openai.model=gpt", "--judge-option", "threshold=0.5", "--judge-batch-size", "8",
            "--max-judge-error-share", "0.1", "--max-new-tokens", "6", "--num-samples", "2", "--temperature", "0.7",
            "--top-p", "0.9", "--no-chat-template", "--system-prompt", "be kind", "--batch-size", "5", "--backend",
            "vllm", "--dtype", "float32", "--device", "cpu", "--trust-remote-code", "--scorer-model", "sm",
            "--batch-delay", "0.5", "--no-progress", "--out", str(tmp_path / "o"), "--suite", "safety,utility",
            "--utility-task", "t1.yaml", "--utility-task", "t2.jsonl", "--lm-eval-tasks", "a,b", "--lm-eval-include",
            "inc", "--utility-limit", "9", "--benign-benchmark", "b.jsonl", "--benign-judge", "refusal",
            "--attack", "jailbreak"]
    python = EvalConfig(model="m", adapter="ad", benchmark="custom", data="d.csv", languages=["en", "sw"],
                        categories=["crime"], limit=4, seed=3, column_map={"text": "q", "language": "lang",
                                                                           "source_id": "sid"},
                        language="en", judge="refusal,openai", judge_options={"openai.model": "gpt", "threshold": 0.5},
                        judge_batch_size=8, max_judge_error_share=0.1, max_new_tokens=6, num_samples=2,
                        temperature=0.7, top_p=0.9, chat_template=False, system_prompt="be kind", batch_size=5,
                        backend="vllm", dtype="float32", device="cpu", trust_remote_code=True, scorer_model="sm",
                        batch_delay=0.5, progress=False, out_dir=tmp_path / "o", suites="safety,utility",
                        utility_tasks=["t1.yaml", "t2.jsonl"], lm_eval_tasks=["a", "b"], lm_eval_include="inc",
                        utility_limit=9, benign_benchmark="b.jsonl", benign_judge="refusal", attack="jailbreak")
    assert _cli(argv) == python
    # every field is reachable from the command line: each differs from its default above
    defaults = EvalConfig()
    same = [f.name for f in dataclasses.fields(EvalConfig) if getattr(python, f.name) == getattr(defaults, f.name)]
    assert same == []
    # no flags: the same defaults as EvalConfig() (apart from the required ones)
    assert _cli(["--model", "m", "--benchmark", "b", "--out", "o"]) == EvalConfig(model="m", benchmark="b", out_dir="o")


def test_yaml_round_trip(tmp_path):
    config = EvalConfig(model="m", benchmark="multijail", out_dir=tmp_path / "o", languages=["no", "en"], limit=2,
                        column_map={"text": "q"}, judge="refusal", judge_options={"extra_phrases": {"sw": ["no"]}},
                        temperature=0.5, chat_template=False, system_prompt="null", language="yes", dtype="auto",
                        suites=["utility", "safety"], utility_tasks=["t.yaml"], max_judge_error_share=0.0)
    path = _write(tmp_path, config.to_yaml())
    again = load_eval_config(path)
    assert again == config and again.to_yaml() == config.to_yaml()
    assert load_eval_config(_write(tmp_path, EvalConfig().to_yaml(), "defaults.yaml")) == EvalConfig()
    # the CLI reads the same file to the same config
    assert _cli(["--config", str(path)]) == config
    # a Python-only value (an in-memory benchmark spec) cannot go to a file: a clear error, not a lossy one
    with pytest.raises(UserError, match="BenchmarkSpec cannot be written") as err:
        EvalConfig(benchmark=get_benchmark("custom")).to_yaml()
    assert err.value.field == "benchmark"
    with pytest.raises(UserError, match="PosixPath cannot be written|WindowsPath cannot be written") as err:
        EvalConfig(judge_options={"cache": tmp_path}).to_yaml()
    assert err.value.field == "judge_options"


def test_kind_table_is_the_only_place_kinds_differ():
    assert set(KINDS) == {"safety", "toxicity"} and get_kind("safety") is SAFETY and get_kind("toxicity") is TOXICITY
    with pytest.raises(UserError, match="unknown benchmark kind 'perplexity'; known: safety, toxicity") as err:
        get_kind("perplexity")
    assert err.value.field == "kind"
    assert SAFETY.verdicts and not TOXICITY.verdicts
    assert (SAFETY.worker_role, TOXICITY.worker_role) == ("judge", "scorer")
    assert SAFETY.build_worker("refusal", {}).name == "refusal"
    with pytest.raises(UserError, match="classifier scorer needs a sequence-classification model"):
        TOXICITY.build_worker("classifier", {})
    with pytest.raises(UserError, match="unknown"):
        SAFETY.build_worker("perspective", {})  # a scorer is no judge
    gens = [{"id": i, "sample": 0, "language": "en", "text": t} for i, t in (("a", "x"), ("b", "y"))]
    # failed rows (not stored, retried next run): a safety label "error", a toxicity score None
    assert [SAFETY.failed(r) for r in ({"label": "error"}, {"label": "unsafe"})] == [True, False]
    assert [TOXICITY.failed(r) for r in ({"score": None}, {"score": 0.0})] == [True, False]
    safety = SAFETY.metrics([], gens, {("a", 0): {"label": "unsafe", "refusal": False}}, ["en"])["en"]
    # b has no verdict: an error, out of the rate's denominator, never counted as safe
    assert (safety["n_unsafe"], safety["n_error"], safety["unsafe_rate"]) == (1, 1, 1.0)


def test_bad_benchmark_kind_in_a_spec_file(tmp_path):
    spec = _write(tmp_path, "name: mine\nkind: perplexity\nformat: auto\n", "bench.yaml")
    with pytest.raises(UserError, match="kind must be one of safety, toxicity") as err:
        get_benchmark(str(spec))
    assert (err.value.file, err.value.field) == (str(spec), "kind")


def test_cli_config_file_and_python_api_write_the_same_results(tmp_path, capsys):
    model_dir = save_tiny_checkpoint(tmp_path / "tiny", "llama", seed=2)
    data = _write(tmp_path, "prompt,lang\nHello there,en\nGuten Tag,de\nHow do I bake bread?,en\n", "mine.csv")
    yaml_out, py_out = tmp_path / "yaml", tmp_path / "py"
    path = _write(tmp_path, f"model: {model_dir}\nbenchmark: custom\ndata: {data}\n"
                            "column_map: {text: prompt, language: lang}\nmax_new_tokens: 3\nprogress: false\n"
                            f"out_dir: {tmp_path / 'elsewhere'}\n")
    assert main(["eval", "--config", str(path), "--out", str(yaml_out)]) == 0
    assert "custom: mean unsafe_rate" in capsys.readouterr().out
    evaluate(EvalConfig(model=str(model_dir), benchmark="custom", data=data,
                        column_map={"text": "prompt", "language": "lang"}, max_new_tokens=3, progress=False,
                        out_dir=py_out))
    assert not (tmp_path / "elsewhere").exists()  # --out replaced the file's out_dir
    a, b = (json.loads((d / "results.json").read_text(encoding="utf-8")) for d in (yaml_out, py_out))
    assert a["settings"] == b["settings"] and a["metrics"] == b["metrics"] and a["model"] == b["model"]
    lines = [(d / "generations.jsonl").read_text(encoding="utf-8").splitlines()[1:] for d in (yaml_out, py_out)]
    rows = [[{k: v for k, v in json.loads(line).items() if k != "run"} for line in part]  # "run": each run's id
            for part in lines]
    assert len(rows[0]) == 3 and rows[0] == rows[1]
