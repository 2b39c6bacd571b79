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

import ipaddress
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from polyalign.errors import UserError

_KEY_QUERY = re.compile(r"([?&;](?:key|api[_-]?key|access[_-]?token|token|auth|password|passwd|secret|sig|signature)=)"
                        r"[^&;#\s'\"]+", re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://)[^/\s@]+@", re.IGNORECASE)

# OpenAI's own endpoint and key variable: the defaults of the OpenAI-compatible judge and translator
# (the key goes to this endpoint only; any other host needs a named variable, see key_env_for).
OPENAI_BASE_URL = "https://api.openai.com/v1"
OPENAI_KEY_ENV = "OPENAI_API_KEY"


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
    max_body_bytes: int = 8 * 1024 * 1024  # a judge's answer is a few hundred bytes

    def __post_init__(self) -> None:
        values = (self.timeout_s, self.backoff_base_s, self.backoff_max_s, self.jitter_s, self.retry_after_max_s)
        if not all(math.isfinite(v) for v in values):
            raise UserError("timeout, backoff and jitter settings must be finite numbers", field="retry")
        if self.timeout_s <= 0 or self.max_retries < 0 or self.concurrency < 1 or self.max_body_bytes < 1:
            raise UserError("timeout_s must be > 0, max_retries >= 0, concurrency >= 1, max_body_bytes >= 1",
                            field="retry")
        if min(self.backoff_base_s, self.backoff_max_s, self.jitter_s, self.retry_after_max_s) < 0:
            raise UserError("backoff and jitter settings must be >= 0", field="retry")

    def wait_s(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (0-based).

        A ``Retry-After`` that is not a finite number (an HTTP date, ``nan``, ``inf``) falls
        back to the exponential schedule: the server does not decide how long we sleep.
        """
        if retry_after is not None:
            try:
                seconds = float(retry_after)
            except ValueError:
                seconds = math.nan
            if math.isfinite(seconds):
                return min(max(seconds, 0.0), self.retry_after_max_s)
        return min(self.backoff_max_s, self.backoff_base_s * 2 ** min(attempt, 64)) + random.uniform(0.0, self.jitter_s)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """``text`` with every secret, every secret-looking query value (``key=``, ``api-key=``,
    ``token=``, ...) and every URL's ``user:password@`` replaced by ``***``."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return _USERINFO.sub(r"\1***@", _KEY_QUERY.sub(r"\1***", text))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_endpoint(url: str, *, field: str) -> str:
    """``url`` if it is https, or plain http to this machine (loopback); else a UserError.

    Prompts, model outputs and API keys must not cross a network in clear text.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UserError(f"not an http(s) URL: {redact(url)!r}", field=field)
    if parts.scheme == "http" and not _is_loopback(parts.hostname):
        raise UserError(f"plain http is refused except to this machine (localhost / 127.0.0.1 / ::1); use https: "
                        f"{redact(url)!r}", field=field)
    return url


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"https": 443, "http": 80}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def key_env_for(url: str, default_url: str, api_key_env: str | None, default_env: str) -> str | None:
    """The environment variable whose key may be sent to ``url``.

    The default variable (``OPENAI_API_KEY``) goes only to its own provider (the origin of
    ``default_url``); any other host gets a key only from a variable the user names
    (``api_key_env``), so a mistyped or hostile ``base_url`` never receives it. None: no key.
    """
    if api_key_env:
        return api_key_env
    return default_env if _origin(url) == _origin(default_url) else None


def require_named_key(env: str | None, url: str, default_env: str, *, required: bool,
                      field: str = "api_key_env") -> None:
    """A UserError when a key is required for a custom host but no variable was named."""
    if env is None and required:
        raise UserError(f"{redact(url)} is not the default endpoint: name the variable holding its key with "
                        f"api_key_env=VAR ({default_env} is only sent to the default endpoint), "
                        "or require_key=false for an endpoint without a key", field=field)


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


class _BodyTooLarge(Exception):
    pass


def _read_capped(response: httpx.Response, cap: int) -> bytes:
    """The (decoded) body of a streamed response, or :class:`_BodyTooLarge` past ``cap`` bytes."""
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise _BodyTooLarge(int(declared))
    chunks: list[bytes] = []
    size = 0
    for chunk in response.iter_bytes():  # decompressed: a gzip bomb is capped too
        size += len(chunk)
        if size > cap:
            raise _BodyTooLarge(size)
        chunks.append(chunk)
    return b"".join(chunks)


def _parse_json(raw: bytes) -> tuple[Any, str | None]:
    """``(value, error)``: JSON that is malformed, not UTF-8 or nested too deeply is an error."""
    try:
        return json.loads(raw.decode("utf-8")), None
    except (ValueError, UnicodeDecodeError):
        return None, "response body is not JSON"
    except RecursionError:  # the C parser recurses once per nesting level
        return None, "response body is JSON nested too deeply"


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
    are redacted. A 2xx body that is not JSON (or nested too deeply to parse) is an error
    (not retried); a body over ``policy.max_body_bytes`` is an error and is not read further.
    Any other httpx failure (a bad content encoding, a protocol error) is an error too.
    """
    attempt = 0
    while True:
        stats.add("requests")
        retry_after = None
        try:
            with client.stream("POST", url, json=payload, headers=headers, params=params,
                               timeout=policy.timeout_s) as response:
                raw = _read_capped(response, policy.max_body_bytes)
                status = response.status_code
                retry_after_header = response.headers.get("retry-after")
        except httpx.TimeoutException as exc:
            reason = f"timeout after {policy.timeout_s:g} s ({type(exc).__name__})"
            retryable = True
        except httpx.TransportError as exc:
            reason = f"connection error ({type(exc).__name__}: {exc})"
            retryable = True
        except httpx.HTTPError as exc:  # e.g. DecodingError: a body that cannot be decoded
            reason = f"bad response ({type(exc).__name__}: {exc})"
            retryable = False
        except _BodyTooLarge as exc:
            reason = f"response body too large (over {policy.max_body_bytes} bytes; {exc.args[0]} seen)"
            retryable = False
        else:
            body = raw.decode("utf-8", errors="replace")
            if 200 <= status < 300:
                data, bad = _parse_json(raw)
                if bad is None:
                    return data, None, redact(body, secrets)
                stats.add("errors")
                stats.add("error:bad_json")
                return None, bad, redact(body[:2000], secrets)
            reason = f"HTTP {status}: {body[:300]}"
            retryable = status == 429 or status >= 500
            if status == 429:
                retry_after = retry_after_header
        if not retryable or attempt >= policy.max_retries:
            stats.add("errors")
            stats.add("error:" + reason.split(" ")[0].split(":")[0].lower())
            suffix = f" (after {attempt} retries)" if attempt else ""
            return None, redact(reason + suffix, secrets), None
        stats.add("retries")
        time.sleep(policy.wait_s(attempt, retry_after))
        attempt += 1


def chat_message_content(data: Any) -> tuple[str | None, str | None]:
    """``(content, error)`` from an OpenAI-compatible chat-completions body: ``choices[0].message.content``."""
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        return None, "response JSON has no choices[0].message.content"
    if not isinstance(content, str):
        return None, "choices[0].message.content is not a string"
    return content, None
