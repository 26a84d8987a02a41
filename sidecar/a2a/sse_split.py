"""SSE event framing for the peer relay (relay.py): bytes in, one block per event out.

Why a class of its own: a hostile peer can drip one large event in tiny pieces. Framing
that re-normalised line ends and re-searched the whole pending buffer on every read cost
CPU quadratic in the event's size (review s11 finding 6). Here each read is normalised once
(a trailing CR held back: its LF may come next) and the blank-line search resumes where the
last one stopped, so the work is linear in the bytes received; ``scanned`` counts it (what
the tests measure, never a duration).
"""

from __future__ import annotations

__all__ = ["SseSplitter"]


class SseSplitter:
    """Splits a byte stream into SSE event blocks (line ends normalised to LF, the blank
    line that ends each block removed)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._held = b""  # a CR that ended the last read: CRLF or a lone CR, not known yet
        self._search_from = 0  # no blank line starts before this offset of the buffer
        self.scanned = 0  # bytes normalised or searched so far (the work done)

    @property
    def pending(self) -> int:
        """Bytes of an event still arriving (the held CR included)."""
        return len(self._buffer) + len(self._held)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The blocks ``chunk`` completes."""
        data = self._held + chunk
        self._held = b""
        if data.endswith(b"\r"):
            data, self._held = data[:-1], b"\r"
        self.scanned += len(data)
        self._buffer += data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        return self._blocks()

    def finish(self) -> tuple[list[bytes], bytes]:
        """At the stream's end: the blocks left, and the bytes of an unfinished event."""
        if self._held:
            self._buffer += b"\n"  # a held CR ends a line
            self._held = b""
        blocks = self._blocks()
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._search_from = 0
        return blocks, rest

    def _blocks(self) -> list[bytes]:
        buffer = self._buffer
        blocks: list[bytes] = []
        start = 0
        search = self._search_from
        while True:
            end = buffer.find(b"\n\n", search)
            if end < 0:
                break
            self.scanned += end + 2 - search
            blocks.append(bytes(buffer[start:end]))
            start = search = end + 2
        self.scanned += max(0, len(buffer) - search)
        if start:
            del buffer[:start]  # what is left came in this read: moving it is linear
        # A blank line may straddle this read and the next: resume at the last byte.
        self._search_from = max(0, len(buffer) - 1)
        return blocks
