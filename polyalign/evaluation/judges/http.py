"""HTTP plumbing shared by the API judges: retries with backoff, secret redaction, counters.

Retry policy: a request is retried on timeouts, connection errors, HTTP 429 and 5xx, up to
``max_retries`` times. The wait before retry ``a`` (0-based) is
``min(backoff_max_s, backoff_base_s * 2**a) + uniform(0, jitter_s)``; a 429 with a numeric
``Retry-After`` header waits ``min(Retry-After, retry_after_max_s)`` instead. Other 4xx are
not retried (the request itself is wrong). Every failure ends as an error string, never as
an exception, so one bad item never loses a batch.

Secrets (API keys) must never be written anywhere: every message that leaves this module
passes through :func:`redact`, which removes the given secrets and any ``key=`` query value.
"""

from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any

import httpx

from polyalign.errors import UserError

_KEY_QUERY = re.compile(r"([?&](?:key|api_key|apikey|access_token)=)[^&\s'\"]+", re.IGNORECASE)


@dataclass(frozen=True)
class RetryPolicy:
    """Timeouts, retries and concurrency of an API client (seconds)."""

    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_base_s: float = 1.0
    backoff_max_s: float = 60.0
    jitter_s: float = 1.0
    retry_after_max_s: float = 120.0
    concurrency: int = 8

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1:
            raise UserError("timeout_s must be > 0, max_retries >= 0, concurrency >= 1", field="retry")
        if min(self.backoff_base_s, self.backoff_max_s, self.jitter_s, self.retry_after_max_s) < 0:
            raise UserError("backoff and jitter settings must be >= 0", field="retry")

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based)."""
        if retry_after is not None:
            try:
                return min(max(float(retry_after), 0.0), self.retry_after_max_s)
            except ValueError:  # an HTTP date: fall back to the exponential schedule
                pass
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** attempt) + random.uniform(0.0, self.jitter_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every secret and every ``key=`` query value replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _KEY_QUERY.sub(r"\1***", text)


class _RedactKeyFilter(logging.Filter):
    """Rewrites httpx/httpcore log records so a ``key=`` query value never reaches a log.

    httpx logs every request URL at INFO level, and the Perspective key travels in the
    query string.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


for _name in ("httpx", "httpcore"):
    if not any(isinstance(f, _RedactKeyFilter) for f in logging.getLogger(_name).filters):
        logging.getLogger(_name).addFilter(_RedactKeyFilter())


def api_key_from_env(variable: str, *, required: bool = True) -> str | None:
    """The API key in environment variable ``variable`` (never logged)."""
    value = os.environ.get(variable)
    if not value and required:
        raise UserError(f"environment variable {variable} is not set (it must hold the API key)",
                        field="api_key_env")
    return value or None


class CallStats:
    """Thread-safe counters: ``requests``, ``retries``, ``errors`` and error reasons."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counts[key] += n

    def as_dict(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counts)


def post_json(
    client: httpx.Client,
    url: str,
    payload: dict[str, Any],
    *,
    policy: RetryPolicy,
    stats: CallStats,
    headers: dict[str, str] | None = None,
    params: dict[str, str] | None = None,
    secrets: tuple[str, ...] = (),
) -> tuple[Any, str | None, str | None]:
    """POST ``payload`` as JSON with retries; returns ``(parsed_json, error, raw_body)``.

    Exactly one of ``parsed_json`` / ``error`` is not ``None``. ``error`` and ``raw_body``
    are redacted. A 2xx body that is not JSON is an error (not retried).
    """
    attempt = 0
    while True:
        stats.add("requests")
        retry_after = None
        try:
            response = client.post(url, json=payload, headers=headers, params=params, timeout=policy.timeout_s)
        except httpx.TimeoutException as exc:
            reason = f"timeout after {policy.timeout_s:g} s ({type(exc).__name__})"
            retryable = True
        except httpx.TransportError as exc:
            reason = f"connection error ({type(exc).__name__}: {exc})"
            retryable = True
        else:
            body = response.text
            if 200 <= response.status_code < 300:
                try:
                    return response.json(), None, redact(body, secrets)
                except ValueError:
                    stats.add("errors")
                    stats.add("error:bad_json")
                    return None, "response body is not JSON", redact(body[:2000], secrets)
            reason = f"HTTP {response.status_code}: {body[:300]}"
            retryable = response.status_code == 429 or response.status_code >= 500
            if response.status_code == 429:
                retry_after = response.headers.get("retry-after")
        if not retryable or attempt >= policy.max_retries:
            stats.add("errors")
            stats.add("error:" + reason.split(" ")[0].split(":")[0].lower())
            suffix = f" (after {attempt} retries)" if attempt else ""
            return None, redact(reason + suffix, secrets), None
        stats.add("retries")
        time.sleep(policy.wait_s(attempt, retry_after))
        attempt += 1
