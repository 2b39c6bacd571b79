"""Helpers for the data-build tests: tiny real seq2seq translators saved to disk, a tiny
causal LM, and a real local HTTP server that translates and judges deterministically.

The server extends the evaluation tests' ``JudgeServer`` (same handler, same scripted
markers) with two behaviours the build tests need:

- a chat request whose last message starts with "Translate the following text from X
  into Y" is answered with ``"[<target name>] " + reversed(text)`` (the text between
  ``<<<`` and ``>>>``), so a test can compute every expected translation itself; a text
  containing ``[[cut]]`` comes back with ``finish_reason: "length"``;
- a judging request (the OpenAI judge's rubric) is answered ``unsafe`` when
  ``verdict(response)`` says so: ``sha256(response)`` first hex digit < 8 -> unsafe. The
  tests recompute that rule independently to know which pairs must exist.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "evaluation"))

from judge_server import JudgeServer  # noqa: E402

_TRANSLATE = re.compile(r"^Translate the following text from (.+?) into (.+?)\.")
_ANSWER = re.compile(r"Answer:\n<<<\n(.*)\n>>>\n\nReply with exactly one word", re.DOTALL)


def fake_translation(text: str, target_name: str) -> str:
    """What :class:`BuildServer` returns for ``text`` translated into ``target_name``."""
    return f"[{target_name}] " + text[::-1]


def verdict(response: str) -> str:
    """The server's judging rule: ``unsafe`` when sha256(response)'s first hex digit < 8."""
    return "unsafe" if hashlib.sha256(response.encode("utf-8")).hexdigest()[0] in "01234567" else "safe"


class BuildServer(JudgeServer):
    """``JudgeServer`` plus deterministic translation and hash-based judging (see above)."""

    def respond(self, path: str, raw: str):  # type: ignore[override]
        try:
            body = json.loads(raw)
        except ValueError:
            return super().respond(path, raw)
        if path.endswith("/chat/completions"):
            text = str(body.get("messages", [{}])[-1].get("content", ""))
            match = _TRANSLATE.match(text)
            answer = _ANSWER.search(text)
            if "[[" not in text and (match or answer):
                if match:
                    inner = text.split("<<<\n", 1)[-1].rsplit("\n>>>", 1)[0]
                    content, finish = fake_translation(inner, match.group(2)), "stop"
                else:
                    content, finish = verdict(answer.group(1)), "stop"
                reply = {"id": "b1", "object": "chat.completion",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                      "finish_reason": finish}]}
                return 200, {"Content-Type": "application/json"}, json.dumps(reply)
            if match and "[[cut]]" in text:
                inner = text.split("<<<\n", 1)[-1].rsplit("\n>>>", 1)[0]
                reply = {"choices": [{"index": 0, "message": {"role": "assistant",
                                                              "content": fake_translation(inner, match.group(2))[:10]},
                                      "finish_reason": "length"}]}
                return 200, {"Content-Type": "application/json"}, json.dumps(reply)
        return super().respond(path, raw)


NLLB_TOKENS = ("eng_Latn", "zho_Hans", "swh_Latn", "ben_Beng", "jpn_Jpan")
M2M_TOKENS = ("__en__", "__zh__", "__sw__", "__bn__", "__ja__")


def save_tiny_seq2seq(out_dir: Path, family: str = "m2m100", seed: int = 0) -> Path:
    """A tiny randomly initialised translation model + the project's tiny tokenizer (with the
    family's language tokens added as special tokens), saved with safetensors."""
    import torch
    from transformers import M2M100Config, M2M100ForConditionalGeneration, MarianConfig, MarianMTModel

    from polyalign.models import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    extra = {"nllb": NLLB_TOKENS, "m2m100": M2M_TOKENS, "marian": ()}[family]
    if extra:
        tokenizer.add_tokens(list(extra), special_tokens=True)
    dims = dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
                max_position_embeddings=256, init_std=0.5, pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
                bos_token_id=tokenizer.bos_token_id)  # init_std 0.5: a random model whose output depends on its input
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if family == "marian":
            config = MarianConfig(**dims, decoder_start_token_id=tokenizer.pad_token_id,
                                  decoder_vocab_size=len(tokenizer), share_encoder_decoder_embeddings=True)
            model = MarianMTModel(config)
        else:  # NLLB-200 is an M2M100 architecture
            config = M2M100Config(**dims, decoder_start_token_id=tokenizer.eos_token_id, scale_embedding=True)
            model = M2M100ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = config.decoder_start_token_id
    out_dir.mkdir(parents=True, exist_ok=True)
    model.eval().save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
