"""Token estimates for budgets, the same for every model API (chat, responses, embeddings,
messages): what a call may cost before it is relayed, and what it cost when the provider
reports no usage.

Conservative for any script: byte-level BPE tokenizers never produce more tokens than the
text has UTF-8 bytes, so a reservation counted in bytes cannot be exceeded by the prompt,
whatever the language (a character count assumed ~4 characters a token, which CJK text beats
by 3x).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["DEFAULT_OUTPUT_CAP", "estimated_tokens", "reservation_tokens"]

# What a call without any output cap is assumed to produce, for its reservation.
DEFAULT_OUTPUT_CAP = 1024
# Framing each text part costs (role markers, separators), per part.
PER_PART_OVERHEAD = 4


def _bytes(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def reservation_tokens(
    prompt_texts: Iterable[str], output_cap: int | None, choices: int = 1
) -> int:
    """Tokens to set aside before relay: an upper bound of the prompt (its UTF-8 bytes plus
    framing per part) plus the output cap (or :data:`DEFAULT_OUTPUT_CAP`) for each of the
    ``choices`` the provider is asked to produce (``n``)."""
    texts = list(prompt_texts)
    prompt = sum(_bytes(t) for t in texts) + PER_PART_OVERHEAD * len(texts)
    cap = output_cap if output_cap is not None and output_cap > 0 else DEFAULT_OUTPUT_CAP
    return prompt + cap * max(1, choices)


def estimated_tokens(text: str) -> int:
    """An estimate of the tokens ``text`` is, for a provider that reports no usage: its UTF-8
    bytes (an upper bound, so a budget is never undercharged)."""
    return _bytes(text)
