"""Token estimates for budgets, the same for every model API (chat, responses, embeddings,
messages): what a call may cost before it is relayed, and what it cost when the provider
reports no usage.

Conservative for any script: byte-level BPE tokenizers never produce more tokens than the
text has UTF-8 bytes, so a reservation counted in bytes cannot be exceeded by the prompt,
whatever the language (a character count assumed ~4 characters a token, which CJK text beats
by 3x). The output side is the cap the provider is sent, once per choice it is asked for
(``n``): a call without a cap is reserved :data:`DEFAULT_OUTPUT_CAP` a choice, and under a
budget the provider must then be *sent* that cap (:func:`output_cap_to_send`), or the
reservation would bound nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

__all__ = [
    "DEFAULT_OUTPUT_CAP",
    "MAX_TOKENS",
    "EstimateError",
    "choices_of",
    "estimated_tokens",
    "output_cap_to_send",
    "prompt_tokens",
    "reservation_tokens",
]

# What a call without any output cap is assumed to produce a choice, for its reservation;
# under a budget it is also the cap the provider is sent (output_cap_to_send).
DEFAULT_OUTPUT_CAP = 1024
# Framing each text part costs (role markers, separators), per part.
PER_PART_OVERHEAD = 4
# No count is taken above this (2^40): it keeps every sum far inside the state database's
# 64-bit counters whatever an agent asks for or a provider reports, and is above any real call.
MAX_TOKENS = 2**40


class EstimateError(ValueError):
    """A count the estimate cannot be conservative about (not a positive integer)."""


def _bytes(text: str) -> int:
    # surrogatepass: a lone surrogate (from JSON "\ud800") still counts its 3 bytes.
    return len(text.encode("utf-8", "surrogatepass"))


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def choices_of(value: Any) -> int:
    """How many choices a request asks for, from its ``n`` (absent or null: 1). Anything but a
    positive integer raises :class:`EstimateError`: a provider might read ``"8"`` or ``8.0``
    as 8, so such a request must be refused, not reserved as one choice."""
    if value is None:
        return 1
    if not _positive_int(value):
        raise EstimateError(f"n must be a positive integer, not {value!r}")
    return int(value)


def prompt_tokens(prompt_texts: Iterable[str]) -> int:
    """An upper bound of what the prompt's text parts tokenize to: their UTF-8 bytes plus
    framing per part."""
    total = 0
    for text in prompt_texts:
        if not isinstance(text, str):
            raise EstimateError(f"a prompt part must be text, not {type(text).__name__}")
        total += _bytes(text) + PER_PART_OVERHEAD
    return min(total, MAX_TOKENS)


def reservation_tokens(
    prompt_texts: Iterable[str], output_cap: int | None, choices: int = 1
) -> int:
    """Tokens to set aside before relay: an upper bound of the prompt (its UTF-8 bytes plus
    framing per part) plus the output cap (or :data:`DEFAULT_OUTPUT_CAP` when there is none:
    ``None``, zero or negative) for each of the ``choices`` the provider is asked to produce
    (``n``; validate it with :func:`choices_of`). At most :data:`MAX_TOKENS`."""
    if not _positive_int(choices):
        raise EstimateError(f"choices must be a positive integer, not {choices!r}")
    cap = output_cap if output_cap is not None and _positive_int(output_cap) else 0
    output = min(cap or DEFAULT_OUTPUT_CAP, MAX_TOKENS) * min(choices, MAX_TOKENS)
    return min(prompt_tokens(prompt_texts) + output, MAX_TOKENS)


def output_cap_to_send(requested_cap: int | None, budget_applies: bool) -> int | None:
    """The output cap the provider must be sent when the request (after policy's
    obligation) has ``requested_cap``: that cap when there is one; when there is none and a
    budget applies, :data:`DEFAULT_OUTPUT_CAP` (what was reserved: an uncapped call could
    produce many times it, and 20 of them at once overshoot by 20x); otherwise none."""
    if _positive_int(requested_cap):
        return requested_cap
    return DEFAULT_OUTPUT_CAP if budget_applies else None


def estimated_tokens(text: str) -> int:
    """An estimate of the tokens ``text`` is, for a provider that reports no usage: its UTF-8
    bytes (an upper bound, so a budget is never undercharged)."""
    return min(_bytes(text), MAX_TOKENS)
