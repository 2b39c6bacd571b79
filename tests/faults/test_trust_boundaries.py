"""Issue 21, trust boundaries: each test reproduces one defect found in review (it failed on
the code before the fix) and checks the defence.

Untrusted: model outputs, data files, results.json read back, remote endpoints. This file:
model identity (results never reused across models), the report's folder, the stores, smaller
items; the judges and API endpoints are in ``test_trust_judges.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from faults_helpers import custom_prompts_csv
from polyalign.errors import UserError
from polyalign.evaluation import fingerprints
from polyalign.evaluation.fingerprints import model_fingerprint, source_identity
from polyalign.evaluation.fingerprints import redact as redact_options
from polyalign.evaluation.generation_vllm import engine_options
from polyalign.evaluation.run import EvalConfig, evaluate
from polyalign.http_client import redact
from polyalign.io import append_jsonl_durably, content_sha256, iter_jsonl, read_jsonl_tolerant
from polyalign.models import build_tiny_model, build_tiny_tokenizer
from polyalign.report import build_report
from polyalign.report.figures import Plot, safe_slug
from polyalign.store import JsonlStore

pytestmark = pytest.mark.usefixtures("isolated_cache")


# -- 1. results reused across models ------------------------------------------------------

def _sparse_model_folder(folder: Path, size: int, marker: bytes) -> Path:
    """A model folder with a sparse ``model.safetensors`` of ``size`` bytes that differs from
    another such folder only in a few bytes at offset 4096 (same names, sizes, config)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": 8}')
    with open(folder / "model.safetensors", "wb") as handle:
        handle.truncate(size)
        handle.seek(4096)
        handle.write(marker)
    return folder


def test_weights_over_512_mib_are_identified_by_content(tmp_path):
    model = build_tiny_model("llama", build_tiny_tokenizer(), seed=0)
    size = 513 * 1024 * 1024  # over the old 512 MiB "names and sizes only" line
    a = _sparse_model_folder(tmp_path / "finetune-a", size, b"AAAA")
    b = _sparse_model_folder(tmp_path / "finetune-b", size, b"BBBB")
    ida, idb = model_fingerprint(model, a)["identity"], model_fingerprint(model, b)["identity"]
    assert ida != idb
    assert ida["strength"] == "content" and ida["files"]["model.safetensors"] != idb["files"]["model.safetensors"]
    # Moving a folder keeps its identity (no path in it): a store stays reusable.
    moved = tmp_path / "moved"
    a.rename(moved)
    assert model_fingerprint(model, moved)["identity"] == ida


def test_content_hash_is_cached_by_inode_size_and_mtime(tmp_path):

    path = tmp_path / "w.safetensors"
    path.write_bytes(b"x" * 1000)
    first = content_sha256(path)
    assert first == "sha256:" + hashlib.sha256(b"x" * 1000).hexdigest()
    stat = path.stat()
    # Same inode, size and mtime_ns: the cached hash is answered without reading the file
    # (shown by rewriting it in place and restoring the mtime).
    with open(path, "r+b") as handle:
        handle.write(b"y")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert content_sha256(path) == first
    # A new mtime (any normal write) is hashed again.
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert content_sha256(path) == "sha256:" + hashlib.sha256(b"y" + b"x" * 999).hexdigest()
    # A replaced file (new inode), same size and mtime, is hashed again too.
    replacement = tmp_path / "new"
    replacement.write_bytes(b"z" * 1000)
    os.utime(replacement, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    os.replace(replacement, path)
    assert content_sha256(path) == "sha256:" + hashlib.sha256(b"z" * 1000).hexdigest()


def test_vllm_identity_follows_the_weights_not_the_path(tmp_path):
    folder = _sparse_model_folder(tmp_path / "runs" / "final", 4096 + 8, b"run1")
    before = source_identity(folder)
    (folder / "model.safetensors").write_bytes(b"\0" * 4096 + b"run2" + b"\0" * 4)  # retrained in place
    assert source_identity(folder) != before
    weak = source_identity("no-such-org/no-such-model-xyz")
    assert weak["strength"] == "weak" and "cannot be hashed" in weak["weak_reason"]


def test_weak_identity_never_reuses_a_store(tmp_path, monkeypatch):
    """An in-memory model too big to hash: its generations are not reused by another model."""
    monkeypatch.setattr(fingerprints, "HASH_PARAMS_UP_TO", 0)  # every model counts as "too big"
    tok = build_tiny_tokenizer()
    data = custom_prompts_csv(tmp_path)
    kw = dict(data=data, column_map={"text": "prompt", "language": "lang"}, max_new_tokens=3,
              judge="refusal", out_dir=tmp_path / "eval", progress=False)
    first = evaluate(EvalConfig(benchmark="custom", **kw), model=build_tiny_model("llama", tok, seed=1), tokenizer=tok)
    assert first["run"]["generated"] == 3 and first["model"]["identity"]["strength"] == "weak"
    with pytest.raises(UserError, match="cannot be shown to come from this model") as err:
        evaluate(EvalConfig(benchmark="custom", **kw), model=build_tiny_model("llama", tok, seed=2),  # another model
                 tokenizer=tok)
    assert err.value.field == "model"


# -- 6. the report stays in its folder ----------------------------------------------------

def test_report_metric_names_cannot_escape_the_output_folder(tmp_path):
    run = tmp_path / "runs" / "a"
    run.mkdir(parents=True)
    hostile = "../../../escaped_accuracy"  # a utility metric by its suffix, drawn in a scatter
    per_language = {lang: {"unsafe_rate": u, hostile: a} for lang, u, a in
                    (("en", 0.1, 0.7), ("de", 0.3, 0.5), ("sw", 0.5, 0.4))}
    (run / "results.json").write_text(json.dumps({"metrics": {"per_language": per_language}}))
    out = tmp_path / "deep" / "er" / "report"
    build_report([run], out)
    escaped = [p for p in tmp_path.rglob("*.png") if out not in p.parents]
    assert escaped == []
    assert any("escaped_accuracy" in p.name for p in out.glob("*.png"))


def test_figure_names_are_sanitised():
    assert safe_slug("../../x/y") == "x_y" and safe_slug("..") == "figure" and safe_slug("a-b_c1") == "a-b_c1"
    assert Plot("../evil", "t", "c", b"").slug == "evil"


# -- 7. the store never wipes a file that is not a store ----------------------------------

@pytest.mark.parametrize("content", [b'{"my": "notes"}', b"id,text\n1,hello\n2,half a li", b"plain text, no newline"])
def test_store_leaves_a_foreign_file_untouched(tmp_path, content):
    path = tmp_path / "generations.jsonl"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a polyalign generations store"):
        JsonlStore(path, kind="generations", fingerprint="f", settings={})
    assert path.read_bytes() == content


def test_store_with_other_settings_keeps_its_torn_line(tmp_path):
    path = tmp_path / "generations.jsonl"
    with JsonlStore(path, kind="generations", fingerprint="old", settings={"a": 1}) as store:
        store.append([{"id": "x", "sample": 0, "text": "t"}])
    torn = path.read_bytes() + b'{"id": "y", "sam'
    path.write_bytes(torn)
    with pytest.raises(UserError, match="different settings"):
        JsonlStore(path, kind="generations", fingerprint="new", settings={"a": 2})
    assert path.read_bytes() == torn  # refused before any truncation
    with JsonlStore(path, kind="generations", fingerprint="old", settings={"a": 1}) as store:  # its own settings
        assert store.recovered_torn_lines == 1 and len(store) == 1


def test_store_recovers_its_own_torn_header(tmp_path):
    path = tmp_path / "judgments.jsonl"
    path.write_bytes(b'{"_store": "judgments", "vers')
    with JsonlStore(path, kind="judgments", fingerprint="f", settings={}) as store:
        assert store.recovered_torn_lines == 1 and len(store) == 0
    assert json.loads(path.read_text().splitlines()[0])["fingerprint"] == "f"


# -- 12. smaller items --------------------------------------------------------------------

def test_url_secrets_are_redacted():
    url = "https://alice:hunter2@llm.example.org/v1?api-key=AK1&token=TK2&key=K3&model=m"
    cleaned = redact(url)
    for secret in ("hunter2", "alice", "AK1", "TK2", "K3"):
        assert secret not in cleaned
    assert "model=m" in cleaned and "llm.example.org" in cleaned
    options = redact_options({"base_url": url, "api_key_env": "MY_VAR", "nested": {"auth_token": "x"}, "n": 3})
    assert "hunter2" not in json.dumps(options) and options["api_key_env"] == "MY_VAR"
    assert options["nested"]["auth_token"] == "***" and options["n"] == 3


def test_deep_json_lines_are_a_user_error(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"a": 1}\n' + '{"b": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(UserError, match="nested too deeply") as err:
        list(iter_jsonl(path))
    assert err.value.line == 2


def test_runs_log_appends_survive_a_torn_line(tmp_path):
    path = tmp_path / "runs.jsonl"
    append_jsonl_durably(path, {"run_id": "a"})
    with open(path, "ab") as handle:
        handle.write(b'{"run_id": "b", "gen')  # a process killed mid-write
    append_jsonl_durably(path, {"run_id": "c"})
    runs, bad = read_jsonl_tolerant(path)
    assert [r["run_id"] for r in runs] == ["a", "c"] and bad == [2]


def test_vllm_engine_loads_safetensors_only(tmp_path):
    assert engine_options(None, trust_remote_code=False)["load_format"] == "safetensors"
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"r": 8}')
    (adapter / "adapter_model.bin").write_bytes(b"pickle")
    with pytest.raises(UserError, match="safetensors"):
        engine_options(str(adapter), trust_remote_code=False)
    (adapter / "adapter_model.safetensors").write_bytes(b"{}")
    assert engine_options(str(adapter), trust_remote_code=False)["max_lora_rank"] == 8
