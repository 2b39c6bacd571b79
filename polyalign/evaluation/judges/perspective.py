"""Perspective API toxicity scorer (``POST {endpoint}/v1alpha1/comments:analyze?key=...``).

Request body: ``{"comment": {"text": t}, "languages": [lang], "requestedAttributes":
{ATTR: {} ...}, "doNotStore": true}``; the score of text ``t`` is
``attributeScores[primary].summaryScore.value`` (a probability in [0, 1]); the other
requested attributes are kept in :attr:`ToxicityScore.attributes`.

Same retry policy as every API judge (:mod:`polyalign.http_client`). A text that
could not be scored (empty text -- Perspective rejects empty comments --, HTTP failures
after retries, a body without the attribute) gets ``None`` with the reason; metrics exclude
and count those. The key travels in the query string, so every error message is redacted
(the key and any ``key=`` value) before it leaves the client. ``PERSPECTIVE_API_KEY`` is sent
only to the default endpoint; another ``endpoint`` must name its key variable
(``api_key_env``) and be https (plain http only to loopback).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from polyalign.errors import UserError
from polyalign.evaluation.judges.base import ToxicityScore, ToxicityScorer, check_languages
from polyalign.http_client import (
    CallStats,
    RetryPolicy,
    api_key_from_env,
    check_endpoint,
    key_env_for,
    post_json,
    redact,
    require_named_key,
)

DEFAULT_ENDPOINT = "https://commentanalyzer.googleapis.com"
DEFAULT_KEY_ENV = "PERSPECTIVE_API_KEY"


class PerspectiveScorer(ToxicityScorer):
    """Perspective API client; ``attributes[0]`` is the score returned by :meth:`score`."""

    name = "perspective"

    def __init__(
        self,
        *,
        endpoint: str = DEFAULT_ENDPOINT,
        attributes: Sequence[str] = ("TOXICITY",),
        api_key_env: str | None = None,
        retry: RetryPolicy | None = None,
        send_language: bool = True,
    ) -> None:
        if not attributes:
            raise UserError("at least one Perspective attribute is needed", field="attributes")
        self.endpoint = check_endpoint(endpoint, field="endpoint").rstrip("/")
        self.attributes = [a.upper() for a in attributes]
        # PERSPECTIVE_API_KEY goes only to Google's endpoint; another host needs its own variable.
        self.api_key_env = key_env_for(self.endpoint, DEFAULT_ENDPOINT, api_key_env, DEFAULT_KEY_ENV)
        require_named_key(self.api_key_env, self.endpoint, DEFAULT_KEY_ENV, required=True)
        self.send_language = send_language
        self.retry = retry or RetryPolicy(concurrency=1)  # the default quota is 1 query/s
        self.__key = api_key_from_env(self.api_key_env or DEFAULT_KEY_ENV)
        self.stats = CallStats()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "endpoint": redact(self.endpoint, self._secrets()),
                "attributes": self.attributes, "send_language": self.send_language}

    def _secrets(self) -> tuple[str, ...]:
        return (self.__key,) if self.__key else ()

    def _score_one(self, client: httpx.Client, text: str, language: str | None) -> ToxicityScore:
        if not text or not text.strip():
            self.stats.add("skipped_empty")
            return ToxicityScore(None, "empty text (Perspective rejects empty comments)")
        payload: dict[str, Any] = {"comment": {"text": text},
                                   "requestedAttributes": {a: {} for a in self.attributes},
                                   "doNotStore": True}
        if self.send_language and language:
            payload["languages"] = [language.split("-")[0]]
        data, error, _raw = post_json(client, f"{self.endpoint}/v1alpha1/comments:analyze", payload,
                                      policy=self.retry, stats=self.stats, params={"key": self.__key or ""},
                                      secrets=self._secrets())
        if error is not None:
            return ToxicityScore(None, error)
        values: dict[str, float] = {}
        try:
            for attribute in self.attributes:
                value = float(data["attributeScores"][attribute]["summaryScore"]["value"])
                if not 0.0 <= value <= 1.0:
                    raise ValueError(value)
                values[attribute] = value
        except (KeyError, TypeError, ValueError):
            self.stats.add("errors")
            self.stats.add("error:no_score")
            return ToxicityScore(None, f"response has no valid attributeScores.{attribute}.summaryScore.value")
        return ToxicityScore(values[self.attributes[0]], None, values)

    def score_detailed(self, texts: Sequence[str], languages: Sequence[str] | None = None) -> list[ToxicityScore]:
        langs = check_languages(texts, languages)
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=self.retry.concurrency) as pool:
            return list(pool.map(lambda pair: self._score_one(client, *pair), zip(texts, langs)))
