"""The OpenAI-compatible judge server process dies mid-eval and comes back: nothing is lost.

The server is ``tests/evaluation/judge_server.py`` run as its own process on a fixed port by a
small launcher that SIGKILLs the process when it receives request number ``DIE_AFTER + 1``
(a deterministic moment mid-judging; requests in flight at that moment are cut off).

1. Run 1 judges until the server dies, then sits in its retry backoff; we SIGKILL it there.
   Only judgments answered before the death are stored.
2. Run 2 (same command) reuses every generation and every stored judgment; its server dies
   again after 4 requests and is restarted at once on the same port; the client's retries
   (1 s, 2 s, ... backoff) reach the new process and the run completes.
Checks: exactly one judgment per item, no judge errors, the items judged by the servers of
run 2 are exactly the ones missing after run 1 (nothing judged twice that was stored, nothing
dropped), and every request carried the API key taken from the environment.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from faults_helpers import PY, REPO, env

N_ITEMS = 12

LAUNCHER = '''
import json, os, signal, sys, threading
sys.path.insert(0, sys.argv[4])
from http.server import ThreadingHTTPServer
from judge_server import JudgeServer

port, die_after, log_path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
server = JudgeServer()
handler = server.httpd.RequestHandlerClass
server.httpd.server_close()
lock, seen = threading.Lock(), [0]
original = server.respond

def respond(path, raw):
    with lock:
        seen[0] += 1
        if seen[0] > die_after:
            os.kill(os.getpid(), signal.SIGKILL)
        with open(log_path, "a") as log:
            body = json.loads(raw)
            log.write(json.dumps({"content": body["messages"][-1]["content"],
                                  "auth": server.requests[-1]["headers"].get("authorization")}) + "\\n")
    return original(path, raw)

server.respond = respond
server.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
server.httpd.daemon_threads = True
print("ready", flush=True)
server.httpd.serve_forever(poll_interval=0.05)
'''


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(tmp_path: Path, port: int, die_after: int, log: Path) -> subprocess.Popen:
    script = tmp_path / "launch_judge.py"
    script.write_text(LAUNCHER)
    proc = subprocess.Popen([PY, str(script), str(port), str(die_after), str(log), str(REPO / "tests" / "evaluation")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    assert proc.stdout.readline().strip() == "ready", proc.stderr.read()
    return proc


def _items_in(log: Path) -> list[str]:
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    return [row["content"].split("Question number ")[1].split(":")[0] for row in rows]


def _judged(out: Path) -> list[tuple[str, int]]:
    path = out / "judgments.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()[1:] if line.strip()] if path.exists() else []
    return [(r["id"], r["sample"]) for r in rows]


@pytest.mark.slow
def test_judge_server_killed_and_restarted_eval_completes_without_loss(tmp_path):
    from polyalign.models import save_tiny_checkpoint

    model = save_tiny_checkpoint(tmp_path / "model", "llama")
    data = tmp_path / "prompts.csv"
    data.write_text("prompt,lang\n" + "".join(f"Question number {i}: how are you?,en\n" for i in range(N_ITEMS)))
    port = _free_port()
    out = tmp_path / "eval"
    cmd = [PY, "-m", "polyalign", "eval", "--model", str(model), "--benchmark", "custom", "--data", str(data),
           "--column-map", "text=prompt,language=lang", "--max-new-tokens", "3", "--no-progress",
           "--judge", "openai", "--judge-option", f"base_url=http://127.0.0.1:{port}/v1",
           "--judge-option", "model=judge-test", "--judge-option", "api_key_env=OPENAI_API_KEY",
           "--judge-batch-size", "4", "--out", str(out)]
    key_env = env(OPENAI_API_KEY="sk-test-judge-restart-1")

    # 1. Server dies at its 3rd request; the eval process is then killed in its backoff.
    log1 = tmp_path / "server1.jsonl"
    server = _start_server(tmp_path, port, 2, log1)
    run1 = subprocess.Popen(cmd, cwd=tmp_path, env=key_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        server.wait(timeout=120)
        time.sleep(0.5)
        assert run1.poll() is None, run1.stderr.read()[-2000:]
    finally:
        run1.send_signal(signal.SIGKILL)
        run1.communicate()
    assert server.returncode == -signal.SIGKILL and run1.returncode == -signal.SIGKILL
    first = _judged(out)
    assert len(first) <= 2 and not (out / "results.json").exists()
    assert len(_items_in(log1)) == 2

    # 2. Rerun; its server dies after 4 requests and is restarted on the same port at once.
    log2 = tmp_path / "server2.jsonl"
    server = _start_server(tmp_path, port, 4, log2)
    run2 = subprocess.Popen(cmd, cwd=tmp_path, env=key_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    restarted = None
    try:
        server.wait(timeout=120)
        restarted = _start_server(tmp_path, port, 10_000, log2)
        stdout, stderr = run2.communicate(timeout=180)
    finally:
        for proc in (run2, restarted):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert run2.returncode == 0, stderr[-3000:]
    judged = _judged(out)
    assert len(judged) == len(set(judged)) == N_ITEMS
    assert judged[: len(first)] == first  # stored work kept, in place
    results = json.loads((out / "results.json").read_text())
    assert results["run"]["judge_errors"] == 0 and results["run"]["judge_reused"] == len(first)
    assert results["metrics"]["per_language"]["en"]["n_total"] == N_ITEMS
    assert results["metrics"]["per_language"]["en"].get("n_error", 0) == 0
    # The items the run-2 servers answered (success or cut off) cover exactly the missing ones.
    # Custom items are numbered by row, so item id i is "Question number i".
    first_items = {i for i, _ in first}
    assert set(_items_in(log2)) == {str(i) for i in range(N_ITEMS)} - first_items
    rows = [json.loads(line) for path in (log1, log2) for line in path.read_text().splitlines()]
    assert rows and all(r["auth"] == "Bearer sk-test-judge-restart-1" for r in rows)
