"""Whether a text gives a secret away, in any of the forms an echoing upstream could use:
an independent check of the scrubber (it decodes, where the scrubber matches forms)."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import unquote

__all__ = ["reveals"]


def reveals(text: str, secret: str) -> bool:
    """Whether ``text`` still gives ``secret`` away: as is, percent-decoded, JSON-unescaped,
    or inside any base64 (standard or URL-safe, any alignment) or hex run decoded."""
    raw = secret.encode()
    candidates = [text, unquote(text), unquote(text.replace("+", " "))]
    for literal in re.findall(r'"((?:[^"\\]|\\.)*)"', text):  # JSON strings, unescaped
        try:
            candidates.append(json.loads(f'"{literal}"'))
        except ValueError:
            continue
    if any(secret in c for c in candidates):
        return True
    for run in re.findall(r"[A-Za-z0-9+/_=-]{8,}", text):
        body = run.rstrip("=")
        for start in range(4):  # the run may begin mid-group
            part = body[start:]
            part = part[: len(part) - len(part) % 4] if len(part) % 4 == 1 else part
            for alt in (b"+/", b"-_"):
                try:
                    decoded = base64.b64decode(part + "=" * (-len(part) % 4), altchars=alt)
                except ValueError:
                    continue
                if raw in decoded:
                    return True
    for run in re.findall(r"[0-9a-fA-F]{8,}", text):
        for start in (0, 1):
            part = run[start:]
            try:
                if raw in bytes.fromhex(part[: len(part) - len(part) % 2]):
                    return True
            except ValueError:
                continue
    return False
