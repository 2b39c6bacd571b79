"""``--model`` resolution: folders, known model names, hub ids, and no download unless asked.

Security (issue 21 item 4): a mistyped folder such as ``runs/final`` has the shape of a hub
id. Here the hub is a local HTTP server that counts requests (``HF_ENDPOINT``, hub offline
mode switched off in a subprocess): loading must ask it for no model and fail in one line;
with the explicit opt-in the same call does reach it (so the counter can see a download).
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from polyalign.cli import main
from polyalign.errors import UserError
from polyalign.models import load_model_and_tokenizer, resolve_model_source, save_tiny_checkpoint

REPO = Path(__file__).resolve().parent.parent


class _CountingHub(http.server.BaseHTTPRequestHandler):
    requests: list[str] = []

    def _answer(self) -> None:
        type(self).requests.append(f"{self.command} {self.path}")
        self.send_response(404)
        self.send_header("Content-Type", "application/json")
        body = json.dumps({"error": "Repository not found"}).encode()
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:  # keep test output clean
        pass


@pytest.fixture
def hub():
    _CountingHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CountingHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _CountingHub.requests
    finally:
        server.shutdown()
        server.server_close()


def _load_in_subprocess(tmp_path, endpoint, model, *args):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                          "POLYALIGN_ALLOW_DOWNLOAD")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), POLYALIGN_CACHE_DIR=str(tmp_path / "cache"),
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    data = tmp_path / "parallel"
    data.mkdir(exist_ok=True)
    (data / "dpo_toxicity_pairwise_en_2.jsonl").write_text('{"Prompt": "Hello there."}\n{"Prompt": "Nice day."}\n')
    (data / "dpo_toxicity_pairwise_de_2.jsonl").write_text('{"Prompt": "Hallo."}\n{"Prompt": "Schöner Tag."}\n')
    command = [sys.executable, "-m", "polyalign", *args, "analyze", "retrieval", "--model", model,
               "--data", str(data), "-o", str(tmp_path / "r.json")]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_mistyped_folder_never_downloads(tmp_path, hub):
    endpoint, requests = hub
    done = _load_in_subprocess(tmp_path, endpoint, "runs/final")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("polyalign: error: runs/final: no such model folder"), done.stderr
    assert "--allow-download" in lines[0]
    # huggingface_hub itself asks for its "agent harnesses" list (user-agent tagging, once a day)
    # when the environment names a coding agent; no request may name a model.
    assert [r for r in requests if not r.startswith("GET /api/agent-harnesses")] == []
    # The opt-in reaches the hub (the counter sees it), then fails on its 404 in one line.
    done = _load_in_subprocess(tmp_path, endpoint, "runs/final", "--allow-download")
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("polyalign: error: runs/final: cannot load model")
    assert any("runs/final" in r for r in requests), requests


def test_resolution_rules(tmp_path, monkeypatch):
    monkeypatch.setenv("POLYALIGN_CACHE_DIR", str(tmp_path / "cache"))
    folder = save_tiny_checkpoint(tmp_path / "tiny")
    assert resolve_model_source(folder) == str(folder)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(UserError, match="expected a model folder, got a file"):
        resolve_model_source(tmp_path / "file.txt")
    for bad in ("./runs/final", "/no/such/folder", "a/b/c", "~/x"):
        with pytest.raises(UserError, match="no such model folder"):
            resolve_model_source(bad)
    assert resolve_model_source("org/name") == "org/name"  # a hub id shape: left to the cache lookup
    with pytest.raises(UserError, match="run: polyalign models get gemma-3-270m"):
        resolve_model_source("gemma-3-270m")
    with pytest.raises(UserError, match="nothing is downloaded unless"):
        load_model_and_tokenizer("runs/final")  # one slash: a hub id shape, not cached, no download
    # a local folder of that name wins over the hub-id reading
    monkeypatch.chdir(tmp_path)
    save_tiny_checkpoint(tmp_path / "runs" / "final")
    model, _ = load_model_and_tokenizer("runs/final")
    assert model.config.model_type == "llama"


def test_known_name_not_fetched_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("POLYALIGN_CACHE_DIR", str(tmp_path / "cache"))
    data = tmp_path / "parallel"
    data.mkdir()
    (data / "dpo_toxicity_pairwise_en_2.jsonl").write_text('{"Prompt": "Hello there."}\n{"Prompt": "Nice day."}\n')
    (data / "dpo_toxicity_pairwise_de_2.jsonl").write_text('{"Prompt": "Hallo."}\n{"Prompt": "Schöner Tag."}\n')
    code = main(["analyze", "retrieval", "--model", "smollm2-135m-instruct", "--data", str(data),
                 "-o", str(tmp_path / "r.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "model 'smollm2-135m-instruct' is not fetched yet" in err
    assert "run: polyalign models get smollm2-135m-instruct" in err


def test_allow_download_flag_sets_the_opt_in(monkeypatch, capsys):
    monkeypatch.setenv("POLYALIGN_ALLOW_DOWNLOAD", "0")  # recorded: removed again after the test
    assert main(["models", "list"]) == 0
    assert os.environ["POLYALIGN_ALLOW_DOWNLOAD"] == "0"
    assert main(["--allow-download", "models", "list"]) == 0
    assert os.environ["POLYALIGN_ALLOW_DOWNLOAD"] == "1"
    capsys.readouterr()


_OTHER_LOADERS = """
import sys
from polyalign.errors import UserError
from polyalign.evaluation.judges.classifier import load_classifier
from polyalign.data.build.translate_hf import HFSeq2SeqTranslator
for name, call in (("classifier", lambda: load_classifier("runs/tox", None)),
                   ("translator", lambda: HFSeq2SeqTranslator("runs/mt").load("runs/mt")),
                   ("pretrained_source",
                    lambda: __import__("polyalign.models", fromlist=["x"]).pretrained_source("runs/final"))):
    try:
        result = call()
    except UserError as exc:
        print(name, "UserError", exc)
    else:
        print(name, "returned", result)
"""


def test_other_loaders_never_download_a_mistyped_folder(tmp_path, hub):
    """The toxicity classifier and translation-model loaders follow the same rule as the model
    loader: a hub-id-shaped missing folder asks the hub for nothing unless opted in."""
    endpoint, requests = hub
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
                                                          "POLYALIGN_ALLOW_DOWNLOAD")}
    env.update(HF_ENDPOINT=endpoint, HF_HOME=str(tmp_path / "hf-home"), POLYALIGN_CACHE_DIR=str(tmp_path / "cache"),
               HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5")
    script = _OTHER_LOADERS
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("classifier UserError runs/tox: classifier: no such model folder"), lines
    assert "nothing is downloaded unless" in lines[0] and "nothing is downloaded unless" in lines[1], lines
    assert lines[1].startswith("translator UserError runs/mt: field 'translator.model'"), lines
    assert lines[2] == "pretrained_source returned ('runs/final', True)", lines
    assert [r for r in requests if not r.startswith("GET /api/agent-harnesses")] == []
    # The opt-in lets the same loaders reach the hub (the counter sees the classifier ask).
    env["POLYALIGN_ALLOW_DOWNLOAD"] = "1"
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any("runs/tox" in r for r in requests) and any("runs/mt" in r for r in requests), requests
