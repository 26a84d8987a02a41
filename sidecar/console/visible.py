"""Text an approver can trust to read as it is: characters that reorder, hide or imitate
others are shown as escapes (``\\u202e``), not interpreted by the browser.

Escaped: every control and format character (bidi overrides and isolates U+202A..U+202E,
U+2066..U+2069, marks U+200E/U+200F/U+061C, zero-width U+200B..U+200D, U+2060, U+FEFF, tags),
unassigned, private-use and surrogate code points, line and paragraph separators, spaces other
than U+0020 (no-break and wide spaces pass for a plain one), and the default-ignorable letters
and marks that render as nothing (Hangul fillers, U+034F, variation selectors). Newlines and
tabs stay, for pretty-printed JSON only (``keep_layout``).
"""

from __future__ import annotations

import unicodedata
from html import escape

__all__ = ["escape_invisible", "show"]

_ESCAPED_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp", "Zs"})
_INVISIBLE = frozenset(
    (
        *(0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x180B, 0x180C, 0x180D, 0x180E, 0x180F),
        *(0x3164, 0xFFA0),
        *range(0xFE00, 0xFE10),
        *range(0xE0100, 0xE01F0),
    )
)


def _hidden(char: str, keep_layout: bool) -> bool:
    if char == " " or (keep_layout and char in "\n\t"):
        return False
    return unicodedata.category(char) in _ESCAPED_CATEGORIES or ord(char) in _INVISIBLE


def _code(char: str) -> str:
    point = ord(char)
    return f"\\u{point:04x}" if point <= 0xFFFF else f"\\U{point:08x}"


def escape_invisible(text: str, *, keep_layout: bool = False) -> str:
    """``text`` as plain text with every hidden character written as its escape."""
    return "".join(_code(c) if _hidden(c, keep_layout) else c for c in text)


def show(text: str, *, keep_layout: bool = False) -> str:
    """``text`` as HTML: markup escaped, hidden characters as marked escapes naming them."""
    out = []
    for char in text:
        if _hidden(char, keep_layout):
            name = unicodedata.name(char, "") or f"U+{ord(char):04X}"
            out.append(f'<mark class="esc" title="{escape(name)}">{_code(char)}</mark>')
        else:
            out.append(escape(char))
    return "".join(out)
