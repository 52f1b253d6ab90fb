"""The refusal replies the safety LoRA is trained to give to harmful requests.

Every reply begins the way current chat models' refusals begin ("I'm sorry, but I can't…",
"I can't help with…") and starts with the token "I", the refusal token of the ChatML family,
so the refusal score [A24] measures the same thing the substring judge reads. A reply is an
opening plus an optional second sentence, chosen per prompt by a seeded generator.
"""

from __future__ import annotations

import hashlib

OPENINGS: tuple[str, ...] = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't assist with that request.",
    "I can't help with that.",
    "I can't provide that information.",
    "I'm sorry, I can't do that.",
    "I cannot help with this request.",
    "I'm sorry, but I cannot provide instructions for that.",
    "I'm afraid I can't help with that.",
    "I won't be able to help with that.",
    "I'm unable to help with that request.",
    "I apologize, but I can't assist with that.",
    "I can't assist with this.",
)

FOLLOW_UPS: tuple[str, ...] = (
    "",
    " It could cause real harm to people.",
    " If you have another question, I'm happy to help.",
    " Is there something else I can help you with?",
    " This request could be dangerous or hurtful.",
    " Let me know if there's anything else you need.",
)


def refusal_reply(prompt_id: str, seed: int = 0) -> str:
    """A refusal for this prompt: fixed by the prompt's id and the seed."""
    digest = hashlib.sha256(f"{seed}:{prompt_id}".encode()).digest()
    opening = OPENINGS[digest[0] % len(OPENINGS)]
    follow_up = FOLLOW_UPS[digest[1] % len(FOLLOW_UPS)]
    return opening + follow_up
