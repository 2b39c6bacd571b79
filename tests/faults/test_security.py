"""Security audit: remote code, pickles, and API keys.

- Every ``from_pretrained`` call in ``polyalign/`` (AST scan) passes ``trust_remote_code`` as
  the constant False or as a parameter of the enclosing function whose default is False, and
  every model load passes ``use_safetensors=True``. ``PeftModel.from_pretrained`` takes no
  such flags (PEFT adapters carry no code; PEFT reads ``adapter_model.safetensors``, its
  ``.bin`` fallback goes through ``torch.load(weights_only=True)``): listed and counted.
- No ``torch.load`` without ``weights_only=True``, no ``pickle.load(s)`` in ``polyalign/``.
- A planted API key (``OPENAI_API_KEY=sk-test-PLANTED-123``) is used (the local judge server
  receives it as a bearer token) but appears in no output file and no captured stdout/stderr of
  ``polyalign eval`` (OpenAI judge), ``polyalign train`` (with checkpoints) and
  ``polyalign report``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from faults_helpers import REPO, cli, recipe, write_pairs

sys.path.insert(0, str(REPO / "tests" / "evaluation"))
from judge_server import JudgeServer  # noqa: E402

PACKAGE = REPO / "polyalign"
KEY = "sk-test-PLANTED-123"
MODEL_LOADERS = ("AutoModel", "AutoModelForCausalLM", "AutoModelForSequenceClassification", "AutoModelForSeq2SeqLM",
                 "LlamaForCausalLM")


def _calls(attr: str) -> list[tuple[Path, ast.Call, list[ast.AST]]]:
    """``(file, call, enclosing function stack)`` for every ``X.<attr>(...)`` call in the package."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))

        def visit(node: ast.AST, stack: list[ast.AST], path: Path = path) -> None:  # this file's path (B023)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attr:
                found.append((path, node, list(stack)))
            inner = stack + [node] if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else stack
            for child in ast.iter_child_nodes(node):
                visit(child, inner)

        visit(tree, [])
    return found


def _keyword(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _parameter_default(stack: list[ast.AST], name: str) -> object:
    """Default of parameter ``name`` of the innermost enclosing function having it (or 'absent')."""
    for func in reversed(stack):
        args = func.args
        positional = args.posonlyargs + args.args
        defaults = dict(zip([a.arg for a in positional][len(positional) - len(args.defaults):], args.defaults))
        defaults.update({a.arg: d for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None})
        if name in [a.arg for a in positional + args.kwonlyargs]:
            node = defaults.get(name)
            return node.value if isinstance(node, ast.Constant) else "no default"
    return "absent"


def test_every_from_pretrained_keeps_remote_code_off_and_loads_safetensors():
    calls = _calls("from_pretrained")
    assert len(calls) >= 5  # the scan sees the loaders (not vacuous)
    peft, problems = [], []
    for path, call, stack in calls:
        owner = call.func.value
        owner_name = owner.id if isinstance(owner, ast.Name) else ast.unparse(owner)
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        if owner_name == "PeftModel":
            peft.append(where)
            continue
        flag = _keyword(call, "trust_remote_code")
        if flag is None:
            problems.append(f"{where}: no trust_remote_code")
        elif isinstance(flag, ast.Constant):
            if flag.value is not False:
                problems.append(f"{where}: trust_remote_code={flag.value!r}")
        elif isinstance(flag, ast.Name):
            if _parameter_default(stack, flag.id) is not False:
                problems.append(f"{where}: trust_remote_code={flag.id} does not default to False")
        else:
            problems.append(f"{where}: trust_remote_code={ast.unparse(flag)} is not a setting defaulting to False")
        if owner_name.startswith("AutoModel") or owner_name in MODEL_LOADERS:
            safe = _keyword(call, "use_safetensors")
            # A GGUF file (gguf_file=...) is tensors and metadata, never pickle (real_models/convert.py).
            if not (isinstance(safe, ast.Constant) and safe.value is True) and _keyword(call, "gguf_file") is None:
                problems.append(f"{where}: model load without use_safetensors=True")
    assert problems == []
    assert len(peft) <= 2, peft  # adapters only (see the module docstring)


def test_cli_remote_code_flag_is_off_by_default():
    from polyalign.cli import build_parser

    args = build_parser().parse_args(["eval", "--model", "m", "--benchmark", "b"])
    assert args.trust_remote_code is False
    import inspect

    from polyalign.models import load_model_and_tokenizer

    assert inspect.signature(load_model_and_tokenizer).parameters["trust_remote_code"].default is False


def test_no_unsafe_deserialisation():
    problems = []
    for path, call, _ in _calls("load"):
        owner = ast.unparse(call.func.value)
        where = f"{path.relative_to(REPO)}:{call.lineno}"
        if owner == "torch":
            flag = _keyword(call, "weights_only")
            if not (isinstance(flag, ast.Constant) and flag.value is True):
                problems.append(f"{where}: torch.load without weights_only=True")
        if owner in ("pickle", "dill", "cloudpickle", "joblib"):
            problems.append(f"{where}: {owner}.load")
    problems += [f"{p.relative_to(REPO)}:{c.lineno}: pickle.loads" for p, c, _ in _calls("loads")
                 if ast.unparse(c.func.value) == "pickle"]
    assert problems == []


def _grep_outputs(folder: Path, streams: dict[str, str]) -> list[str]:
    leaks = [name for name, text in streams.items() if KEY in text]
    needle = KEY.encode()
    for file in folder.rglob("*"):
        if file.is_file() and needle in file.read_bytes():
            leaks.append(str(file))
    return leaks


def test_planted_api_key_never_reaches_outputs_or_logs(tmp_path):
    from polyalign.models import save_tiny_checkpoint

    work = tmp_path / "work"
    work.mkdir()
    model = save_tiny_checkpoint(work / "model", "llama")
    data = work / "prompts.csv"
    data.write_text("prompt,lang\n" + "".join(f"Question {i}: say hi,en\n" for i in range(4)))
    streams: dict[str, str] = {}
    with JudgeServer() as server:
        proc = cli(["eval", "--model", str(model), "--benchmark", "custom", "--data", str(data), "--column-map",
                    "text=prompt,language=lang", "--max-new-tokens", "3", "--judge", "openai", "--judge-option",
                    f"base_url={server.url}/v1", "--judge-option", "model=judge-test",
                    "--judge-option", "api_key_env=OPENAI_API_KEY", "--out", str(work / "eval")],
                   cwd=work, OPENAI_API_KEY=KEY)
        assert proc.returncode == 0, proc.stderr[-3000:]
        streams["eval stdout"], streams["eval stderr"] = proc.stdout, proc.stderr
        # Positive control: the key was really read from the environment and sent.
        auth = [r["headers"].get("authorization") for r in server.requests]
        assert len(auth) == 4 and set(auth) == {f"Bearer {KEY}"}
    config = recipe(work / "r.yaml", model_name_or_path=str(model),
                    train_file=str(write_pairs(work / "pairs.jsonl", 4)),
                    output_dir=str(work / "run"), reference_cache_dir=str(work / "cache"), max_steps=2,
                    save_strategy="steps", save_steps=1)
    proc = cli(["train", "--config", str(config)], cwd=work, OPENAI_API_KEY=KEY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    streams["train stdout"], streams["train stderr"] = proc.stdout, proc.stderr
    assert (work / "run" / "checkpoint-2").is_dir()
    proc = cli(["report", str(work / "eval"), "-o", str(work / "report")], cwd=work, OPENAI_API_KEY=KEY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    streams["report stdout"], streams["report stderr"] = proc.stdout, proc.stderr
    assert (work / "report" / "report.html").is_file() and (work / "eval" / "results.json").is_file()
    assert _grep_outputs(work, streams) == []
