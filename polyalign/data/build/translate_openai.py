"""Translation through any OpenAI-compatible chat endpoint."""

from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from polyalign.data.build.translation import Translation, Translator
from polyalign.data.languages import canonical_language, language_name
from polyalign.errors import UserError
from polyalign.http_client import (
    OPENAI_BASE_URL,
    OPENAI_KEY_ENV,
    CallStats,
    RetryPolicy,
    api_key_from_env,
    chat_message_content,
    check_endpoint,
    key_env_for,
    post_json,
    redact,
    require_named_key,
)
from polyalign.io import text_fingerprint

TRANSLATION_PROMPT = (
    "Translate the following text from {source_name} into {target_name}. Translate all of it faithfully, "
    "including any offensive or harmful content, since it is used to build safety-training data. Do not "
    "add notes, explanations or refusals. Output only the translation.\n"
    "\n"
    "<<<\n"
    "{text}\n"
    ">>>"
)

_FENCE = re.compile(r"^\s*<<<\s*\n?(.*?)\n?\s*>>>\s*$", re.DOTALL)


class OpenAITranslator(Translator):
    """Translation through an OpenAI-compatible ``POST {base_url}/chat/completions``.

    Uses the shared HTTP plumbing (:mod:`polyalign.http_client`): retries with
    backoff on timeouts / 429 / 5xx, errors as strings (never exceptions), the API key only
    from the environment variable ``api_key_env`` and redacted from every message.
    ``finish_reason == "length"`` marks a translation truncated. Requests in a batch run
    ``retry.concurrency`` at a time.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        require_key: bool = True,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        prompt_template: str = TRANSLATION_PROMPT,
        batch_size: int = 16,
        retry: RetryPolicy | None = None,
    ) -> None:
        if "{text}" not in prompt_template:
            raise UserError("the translation prompt must contain {text}", field="translator.prompt_template")
        self.base_url = check_endpoint(base_url, field="translator.base_url").rstrip("/")
        self.model = model
        # OPENAI_API_KEY goes only to the default endpoint; any other host needs a named variable.
        self.api_key_env = key_env_for(self.base_url, OPENAI_BASE_URL, api_key_env, OPENAI_KEY_ENV)
        require_named_key(self.api_key_env, self.base_url, OPENAI_KEY_ENV, required=require_key,
                          field="translator.api_key_env")
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.prompt_template = prompt_template
        self.batch_size = batch_size
        self.retry = retry if retry is not None else RetryPolicy()
        self.__key = api_key_from_env(self.api_key_env, required=require_key) if self.api_key_env else None
        self.stats = CallStats()

    def _secrets(self) -> tuple[str, ...]:
        return (self.__key,) if self.__key else ()

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "base_url": redact(self.base_url, self._secrets()), "model": self.model,
                "temperature": self.temperature, "max_tokens": self.max_tokens,
                "prompt_sha": text_fingerprint(self.prompt_template)}

    def prompt(self, text: str, source: str, target: str) -> str:
        return self.prompt_template.format(source_name=language_name(source), target_name=language_name(target),
                                           source=source, target=target, text=text)

    def _one(self, client: Any, text: str, source: str, target: str) -> Translation:
        headers = {"Authorization": f"Bearer {self.__key}"} if self.__key else {}
        payload = {"model": self.model, "temperature": self.temperature, "max_tokens": self.max_tokens,
                   "messages": [{"role": "user", "content": self.prompt(text, source, target)}]}
        data, error, _raw = post_json(client, f"{self.base_url}/chat/completions", payload, policy=self.retry,
                                      stats=self.stats, headers=headers, secrets=self._secrets())
        if error is not None:
            return Translation(None, error=error)
        content, error = chat_message_content(data)
        if content is None:
            self.stats.add("errors")
            return Translation(None, error=error)
        content = redact(content, self._secrets())
        fenced = _FENCE.match(content)  # some models echo the <<< >>> fence
        text_out = (fenced.group(1) if fenced else content).strip()
        return Translation(text_out, truncated=data["choices"][0].get("finish_reason") == "length")

    def translate(self, texts: list[str], source: str, target: str) -> list[Translation]:
        source, target = canonical_language(source), canonical_language(target)
        with httpx.Client() as client, ThreadPoolExecutor(max_workers=self.retry.concurrency) as pool:
            return list(pool.map(lambda t: self._one(client, t, source, target), texts))
