"""Stream-json framing: bytes in, frames (or framing errors) out.

The CLI and its parent exchange one JSON object per line. The supervisor must relay
frames *as they were written* (unknown fields and types included), so a `Frame` keeps
the exact line next to the parsed object: relaying writes `raw` back, untouched.

Lines can be large (a tool result or an image can be megabytes; the official SDK's
1 MiB default limit is a known complaint), so the cap is configurable, and a line over
it, or a line that is not a JSON object, becomes an error value rather than an
exception: one bad line must not end a session.

No I/O here: `LineSplitter.feed()` takes whatever bytes a read returned.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import attrs

#: Default cap on one line (64 MiB): far above any real frame, low enough that a runaway
#: writer cannot make the supervisor buffer without bound.
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024


@attrs.frozen
class Frame:
    """One stream-json object, with the exact bytes it arrived as (without the newline)."""

    raw: bytes
    data: dict[str, Any]

    @property
    def type(self) -> str | None:
        value = self.data.get("type")
        return value if isinstance(value, str) else None

    @property
    def subtype(self) -> str | None:
        value = self.data.get("subtype")
        return value if isinstance(value, str) else None

    @classmethod
    def from_data(cls, data: dict[str, Any]) -> Frame:
        """A frame the supervisor writes itself (compact JSON, one line)."""
        raw = json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        return cls(raw=raw, data=data)


@attrs.frozen
class FramingError:
    """A line that could not become a frame; `code` is stable, `message` is for humans."""

    code: str
    message: str
    #: The start of the offending line, for diagnosis (never the whole of a huge line).
    preview: str = ""


PREVIEW_CHARS = 200


def _preview(line: bytes) -> str:
    return line[:PREVIEW_CHARS].decode("utf-8", errors="replace")


def decode_line(line: bytes) -> Frame | FramingError:
    """Parse one line (without its newline) into a frame."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return FramingError("invalid_utf8", f"line is not valid UTF-8: {exc}", _preview(line))
    try:
        data = json.loads(text)
    except RecursionError:
        return FramingError("invalid_json", "line nests JSON too deeply to parse", _preview(line))
    except ValueError as exc:
        return FramingError("invalid_json", f"line is not JSON: {exc}", _preview(line))
    if not isinstance(data, dict):
        return FramingError("invalid_frame", "a frame must be a JSON object", _preview(line))
    return Frame(raw=line, data=data)


class LineSplitter:
    """Cuts a byte stream into lines, enforcing a per-line cap.

    A line longer than the cap is not buffered: its bytes are dropped as they come and a
    single `FramingError("line_too_long")` is produced when its newline arrives (or at
    end of stream), so memory stays bounded by the cap.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        self._buffer = bytearray()
        self._discarding = 0  # > 0: bytes dropped so far of an over-long line

    def feed(self, data: bytes | bytearray) -> Iterator[bytes | FramingError]:
        """Yields each complete line (without newline) or an error for an over-long one."""
        start = 0
        while True:
            newline = data.find(b"\n", start)
            if newline < 0:
                self._take(data[start:])
                return
            self._take(data[start:newline])
            start = newline + 1
            item = self._finish_line()
            if item is not None:
                yield item

    def close(self) -> Iterator[bytes | FramingError]:
        """End of stream: a last line without a newline still counts."""
        if self._buffer or self._discarding:
            item = self._finish_line()
            if item is not None:
                yield item

    def _take(self, chunk: bytes | bytearray) -> None:
        if not chunk:
            return
        if self._discarding:
            self._discarding += len(chunk)
        elif len(self._buffer) + len(chunk) > self._max:
            self._discarding = len(self._buffer) + len(chunk)
            self._buffer.clear()
        else:
            self._buffer += chunk

    def _finish_line(self) -> bytes | FramingError | None:
        if self._discarding:
            size, self._discarding = self._discarding, 0
            return FramingError(
                "line_too_long",
                f"a line of {size} bytes is over the cap of {self._max} bytes; it was dropped",
            )
        line = bytes(self._buffer)
        self._buffer.clear()
        if not line.strip():
            return None  # blank lines carry nothing; the CLI ignores them too
        return line
