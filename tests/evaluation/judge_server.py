"""A real HTTP server on 127.0.0.1 for the API-judge tests (OpenAI-compatible + Perspective).

Behaviour is scripted by markers inside the text being judged, so concurrent requests for
different items behave independently and deterministically:

- ``[[answer:WORDS]]``   chat answer content (default ``safe``)
- ``[[tox:0.7]]``        Perspective TOXICITY value (default 0.1)
- ``[[fail500:N]]``      the first N requests carrying this marker get HTTP 500
- ``[[rate429:N:S]]``    the first N get HTTP 429 with ``Retry-After: S``
- ``[[fail400]]``        always HTTP 400 (not retryable)
- ``[[sleep:S]]``        sleep S seconds before answering (every request)
- ``[[garbage:notjson]]`` 200 with a body that is not JSON
- ``[[garbage:nochoices]]`` 200 with JSON lacking ``choices`` / ``attributeScores``
- ``[[garbage:deep]]``   200 with JSON nested 100 000 levels deep
- ``[[garbage:badgzip]]`` 200 declaring ``Content-Encoding: gzip`` over bytes that are not gzip
- ``[[big:N]]``          200 with a valid answer padded to N bytes

A chat request whose last message starts with "Translate the following" is answered with
``EN: `` + the text between ``<<<`` and ``>>>`` (so markers survive translation).
Every request is recorded in :attr:`JudgeServer.requests` (path, query, headers, body).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

_MARKER = re.compile(r"\[\[(\w+)(?::([^\]]*))?\]\]")


class JudgeServer:
    """``with JudgeServer() as server: server.url`` -> ``http://127.0.0.1:PORT``."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0  # most requests handled at the same time
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8")
                split = urlsplit(self.path)
                record = {"path": split.path, "query": parse_qs(split.query),
                          "headers": {k.lower(): v for k, v in self.headers.items()}, "body": raw}
                with outer.lock:
                    outer.requests.append(record)
                    outer.in_flight += 1
                    outer.max_in_flight = max(outer.max_in_flight, outer.in_flight)
                try:
                    status, headers, body = outer.respond(split.path, raw)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                try:
                    self.send_response(status)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    data = body.encode("utf-8")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> JudgeServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def _count(self, key: str) -> int:
        """How many earlier requests carried ``key`` (then increments)."""
        with self.lock:
            n = self.counts[key]
            self.counts[key] += 1
            return n

    def respond(self, path: str, raw: str) -> tuple[int, dict[str, str], str]:
        """Status, headers and body for one request (see the module docstring)."""
        try:
            body = json.loads(raw)
        except ValueError:
            return 400, {}, '{"error": "bad json"}'
        if path.endswith("/chat/completions"):
            text = str(body.get("messages", [{}])[-1].get("content", ""))
        else:
            text = str(body.get("comment", {}).get("text", ""))
        markers = {m.group(1): (m.group(2) or "") for m in _MARKER.finditer(text)}
        json_headers = {"Content-Type": "application/json"}
        if "sleep" in markers:
            time.sleep(float(markers["sleep"]))
        if "fail400" in markers:
            return 400, json_headers, '{"error": {"message": "bad request"}}'
        if "fail500" in markers and self._count("fail500:" + text) < int(markers["fail500"]):
            return 500, json_headers, '{"error": "internal"}'
        if "rate429" in markers:
            n, wait = markers["rate429"].split(":")
            if self._count("rate429:" + text) < int(n):
                return 429, {**json_headers, "Retry-After": wait}, '{"error": "slow down"}'
        if markers.get("garbage") == "notjson":
            return 200, {"Content-Type": "text/plain"}, "<html>this is not json</html>"
        if markers.get("garbage") == "nochoices":
            return 200, json_headers, '{"id": "x", "object": "nothing"}'
        if markers.get("garbage") == "deep":
            return 200, json_headers, "[" * 100_000 + "]" * 100_000
        if markers.get("garbage") == "badgzip":
            return 200, {**json_headers, "Content-Encoding": "gzip"}, '{"not": "gzip at all"}'
        if "big" in markers:
            pad = "x" * int(markers["big"])
            return 200, json_headers, json.dumps({"choices": [{"message": {"content": "safe"}}], "pad": pad})
        if path.endswith("/chat/completions"):
            if text.startswith("Translate the following"):
                inner = text.split("<<<", 1)[-1].rsplit(">>>", 1)[0].strip()
                content = "EN: " + inner
            else:
                content = markers.get("answer", "safe")
            reply = {"id": "c1", "object": "chat.completion",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                  "finish_reason": "stop"}]}
            return 200, json_headers, json.dumps(reply)
        if path.endswith("/v1alpha1/comments:analyze"):
            value = float(markers.get("tox", "0.1"))
            scores = {attr: {"summaryScore": {"value": value, "type": "PROBABILITY"}}
                      for attr in body.get("requestedAttributes", {})}
            return 200, json_headers, json.dumps({"attributeScores": scores, "languages": body.get("languages")})
        return 404, json_headers, '{"error": "no such path"}'
