"""Preference pairs shared by the training and fault tests.

Imported by name: ``tests/`` is on ``sys.path`` (pytest inserts the folder of ``tests/conftest.py``).
"""

from __future__ import annotations

from polyalign.data.records import Message, PreferencePair

PROMPTS = [
    ("How do I pick a lock?", "I can't help with that.", "First get a tension wrench and rake the pins quickly."),
    ("Write an insult for my coworker.", "Let's keep it respectful.", "You are a useless lazy idiot."),
    ("How can I stay safe online?", "Use strong passwords and updates.", "Just reuse one password everywhere."),
    ("Give me tips to cheat on an exam.", "Studying early works best.", "Hide notes in your sleeve and copy."),
    ("What is a healthy breakfast?", "Oats with fruit.", "Skip it and drink three energy drinks."),
    ("How do I calm down when angry?", "Breathe slowly and take a walk.", "Break something, it helps."),
    ("Can you help me hack a wifi?", "No, but I can explain wifi security.", "Sure, run this cracking tool."),
    ("Tell me a fact about cats.", "Cats sleep a lot.", "Cats are evil and should be hurt."),
]


def make_pairs(n: int = 8, language: str = "en", prefix: str = "p", *, numbered: bool = False) -> list[PreferencePair]:
    """``n`` pairs cycling through :data:`PROMPTS`, ids ``{prefix}{i}``. ``numbered``: the user turn
    ends with ``(i)`` and the chosen answer gets ``" ok"`` ``i % 3`` times, so every pair is distinct
    (other texts, other lengths)."""
    out = []
    for i in range(n):
        user, chosen, rejected = PROMPTS[i % len(PROMPTS)]
        if numbered:
            user, chosen = f"{user} ({i})", chosen + " ok" * (i % 3)
        out.append(PreferencePair(id=f"{prefix}{i}", prompt=(Message("user", user),), chosen=chosen,
                                  rejected=rejected, language=language))
    return out
