"""Qwen3Guard-Gen behind an OpenAI-compatible chat endpoint (vLLM / SGLang ``serve``).

The server applies the model's own chat template, so the request is just the conversation:
``[user: prompt]`` (prompt moderation) or ``[user: prompt, assistant: response]``
(response moderation), greedy (``temperature 0``). The answer is parsed with the local
judge's strict :func:`~polyalign.evaluation.judges.qwen3guard_format.parse_output`; ``Controversial``
is mapped by ``controversial_as`` exactly as there.

Failures (timeouts, 429/5xx after retries, other HTTP errors, bodies without
``choices[0].message.content``) are ``error`` judgments, never safe; retries, redaction and
the API key (from ``api_key_env``, optional: local servers usually need none) come from
:mod:`polyalign.http_client`.

Special-token text: the server tokenizes the rendered template itself, so literal
``<|im_end|>``-style text in a response may become a control token there; such items are
flagged ``special_token_text`` (the local judge encodes them safely).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from polyalign.evaluation.judges.base import Judge, JudgeInput, Judgment
from polyalign.evaluation.judges.qwen3guard_format import check_options, judgment_from_output
from polyalign.http_client import CallStats, RetryPolicy, api_key_from_env, chat_message_content, post_json, redact

#: Control-token text of the Qwen3 chat format.
SPECIAL_TOKEN_TEXT = ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>")


class Qwen3GuardAPIJudge(Judge):
    """Qwen3Guard-Gen over ``POST {base_url}/chat/completions``; thread-pool concurrency."""

    name = "qwen3guard_api"

    def __init__(
        self,
        *,
        model: str = "Qwen/Qwen3Guard-Gen-4B",
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key_env: str = "QWEN3GUARD_API_KEY",
        moderate: str = "response",
        controversial_as: str = "unsafe",
        max_tokens: int = 64,
        retry: RetryPolicy | None = None,
    ) -> None:
        check_options(moderate, controversial_as)
        self.model = model
        self.base_url = base_url.rstrip("/")
        self.api_key_env = api_key_env
        self.moderate = moderate
        self.controversial_as = controversial_as
        self.max_tokens = max_tokens
        self.retry = retry or RetryPolicy()
        self.__key = api_key_from_env(api_key_env, required=False)  # never in settings()/repr()
        self.stats = CallStats()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "model": self.model, "base_url": redact(self.base_url, self._secrets()),
                "moderate": self.moderate, "controversial_as": self.controversial_as, "max_tokens": self.max_tokens}

    def _secrets(self) -> tuple[str, ...]:
        return (self.__key,) if self.__key else ()

    def messages(self, item: JudgeInput) -> list[dict[str, str]]:
        """The conversation sent for one item."""
        messages = [{"role": "user", "content": item.prompt}]
        if self.moderate == "response":
            messages.append({"role": "assistant", "content": item.response})
        return messages

    def judge(self, items: Any) -> list[Judgment]:
        if self.moderate == "response":
            return super().judge(items)
        swapped = [JudgeInput(prompt=i.prompt, response=i.prompt, language=i.language, id=i.id) for i in items]
        return super().judge(swapped)

    def _judge_one(self, client: httpx.Client, item: JudgeInput) -> Judgment:
        headers = {"Authorization": f"Bearer {self.__key}"} if self.__key else {}
        payload = {"model": self.model, "messages": self.messages(item), "temperature": 0.0,
                   "max_tokens": self.max_tokens}
        data, error, _raw = post_json(client, f"{self.base_url}/chat/completions", payload, policy=self.retry,
                                      stats=self.stats, headers=headers, secrets=self._secrets())
        if error is None:
            content, error = chat_message_content(data)
        if error is not None:
            return Judgment.failed(self.name, error)
        judgment = judgment_from_output(redact(content or "", self._secrets()), judge=self.name, mode=self.moderate,
                                        controversial_as=self.controversial_as)
        texts = [m["content"] for m in self.messages(item)]
        if any(token in text for token in SPECIAL_TOKEN_TEXT for text in texts):
            judgment.flags.append("special_token_text")
        if judgment.label == "error":
            self.stats.add("unparseable")
        return judgment

    def _judge_batch(self, items: list[JudgeInput]) -> list[Judgment]:
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=self.retry.concurrency) as pool:
            return list(pool.map(lambda item: self._judge_one(client, item), items))
