"""The key a contextId is owned under (docs/a2a.md "A peer's tasks belong to ...", F6).

Ownership is matched on a key, never on the id as sent: a peer (or an agent's A2A server)
that folds case, Unicode compatibility forms, whitespace or invisible characters would
otherwise put two local agents in one conversation while the sidecar saw two ids
(``Session-42``, ``session-42``, a fullwidth ``S``, a trailing zero-width space ...).
Folding rather than refusing such ids: an id is the peer's to make (an agent echoes the
peer's), and a key that merges too much only refuses a second agent an id it could have
used (fail closed), while one that merges too little lets it in. The id sent is never altered.
"""

from __future__ import annotations

import hashlib
import unicodedata

__all__ = ["MAX_KEY_CHARS", "context_key"]

# A folded id longer than this (NFKC expands some characters 18-fold) is kept as a digest, so
# every key fits a PostgreSQL index row.
MAX_KEY_CHARS = 256
# Removed wherever they appear: format (zero-width, bidi marks, soft hyphen, BOM), control
# (newline, tab) and separator characters, and whitespace.
_DROPPED_CATEGORIES = frozenset({"Cf", "Cc", "Zs", "Zl", "Zp"})
# Default-ignorable characters outside those categories: the combining grapheme joiner,
# the Hangul fillers, the variation selectors.
_IGNORABLE = frozenset(
    {0x034F, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x180B, 0x180C, 0x180D, 0x180F}
    | set(range(0xFE00, 0xFE10))
    | set(range(0xE0100, 0xE01F0))
)
# A digest key starts with a space: no folded id contains one, so none can name it.
_DIGEST = " sha256:"


def context_key(context_id: str) -> str:
    """``context_id`` folded: NFKC, case folded, every dash as ``-`` (the minus sign too),
    invisible characters and whitespace dropped anywhere."""
    text = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", context_id).casefold())
    kept: list[str] = []
    for char in text:
        category = unicodedata.category(char)
        if category in _DROPPED_CATEGORIES or char.isspace() or ord(char) in _IGNORABLE:
            continue
        kept.append("-" if category == "Pd" or char == "\u2212" else char)
    key = "".join(kept)
    if len(key) > MAX_KEY_CHARS:
        return _DIGEST + hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
    return key
