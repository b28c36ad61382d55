"""Stream-json framing: bytes in, frames (or framing errors) out.

The CLI and its parent exchange one JSON object per line. The supervisor must relay
frames *as they were written* (unknown fields and types included), so a `Frame` keeps
the exact line next to the parsed object: relaying writes `raw` back, untouched.

Lines can be large (a tool result or an image can be megabytes; the official SDK's
1 MiB default limit is a known complaint; a `result` repeats the whole answer), so the
cap on what is buffered to parse one line is configurable, and a line that is not a JSON
object becomes an error value rather than an exception: one bad line must not end a
session. A line over the cap is not buffered whole: `LineStreamer` hands out its head
(the first cap bytes, which usually say what the line is: see `read_head`) and then the
rest in pieces, so the CLI's over-long lines can be relayed unchanged in bounded memory;
`LineSplitter` drops them with an error (the parent's side, where a frame must be parsed
to be acted on).

No I/O here: `feed()` takes whatever bytes a read returned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import attrs

#: Default cap on what is buffered of one line (64 MiB): far above any real frame, low
#: enough that a runaway writer cannot make the supervisor buffer without bound.
DEFAULT_MAX_LINE_BYTES = 64 * 1024 * 1024

#: The bytes `bytes.strip()` removes: a line of only these is blank.
_BLANK = frozenset(b" \t\n\r\x0b\x0c")
_NOT_BLANK = re.compile(rb"[^ \t\n\r\x0b\x0c]")


@attrs.frozen(eq=False)
class Frame:
    """One stream-json object, with the exact bytes it arrived as (without the newline).

    A frame of the CLI's that is only relayed need not be parsed: `decode_line(line,
    lazy=True)` reads its `type` from the line's head (see `cheap_type`) and leaves
    `data` to be parsed on first use (then kept).
    """

    raw: bytes
    #: The parsed object; None until a lazy frame's `data` is first read.
    _data: dict[str, Any] | None = attrs.field(default=None, alias="data", repr=False)
    #: A CLI line over the cap: `data` holds what could be read of it (see `read_head`,
    #: `MemberScanner`) and `raw` what is still to be written of it: its head, the rest
    #: following in pieces outside the frame, or nothing when the whole line has already
    #: been relayed (its type came after a long value, so it was known only at its end).
    partial: bool = False
    #: A lazy frame's type, read from its head (see `cheap_type`).
    _head_type: str | None = attrs.field(default=None, alias="head_type", repr=False)

    @property
    def data(self) -> dict[str, Any]:
        data = self._data
        if data is None:
            data = self._parse()
            object.__setattr__(self, "_data", data)  # a cache: frozen to everyone else
        return data

    @property
    def parsed(self) -> bool:
        """Whether `data` has been parsed (it always is, but for a lazy frame not read yet)."""
        return self._data is not None

    @property
    def type(self) -> str | None:
        if self._data is None and self._head_type is not None:
            return self._head_type
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

    def _parse(self) -> dict[str, Any]:
        data = _decode(self.raw)
        if not isinstance(data, FramingError):
            return data
        # A line whose head is a frame's but whose body is not JSON: it was relayed as
        # it came (a parent reads it as it would without us); what is known is its type.
        return {} if self._head_type is None else {"type": self._head_type}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Frame):
            return NotImplemented
        return (self.raw, self.partial, self.data) == (other.raw, other.partial, other.data)

    __hash__ = None  # type: ignore[assignment]  # `data` is a dict


@attrs.frozen
class FramingError:
    """A line that could not become a frame; `code` is stable, `message` is for humans."""

    code: str
    message: str
    #: The start of the offending line, for diagnosis (never the whole of a huge line).
    preview: str = ""


PREVIEW_CHARS = 200


def _preview(line: bytes) -> str:
    """The first PREVIEW_CHARS characters of a line (UTF-8 takes at most 4 bytes for
    one, so only that much is decoded, and a character is never cut in half)."""
    return line[: PREVIEW_CHARS * 4].decode("utf-8", errors="replace")[:PREVIEW_CHARS]


def decode_line(line: bytes, *, lazy: bool = False) -> Frame | FramingError:
    """Parse one line (without its newline) into a frame.

    With `lazy`, a line whose head says its type (see `cheap_type`) becomes a frame at
    once, its body parsed only when its `data` is read: for frames that are only
    relayed, the supervisor never parses them. Any other line is parsed in full, so
    what is not a frame is still an error.
    """
    if lazy:
        kind = cheap_type(line)
        if kind is not None:
            return Frame(raw=line, head_type=kind)
    data = _decode(line)
    return data if isinstance(data, FramingError) else Frame(raw=line, data=data)


def _decode(line: bytes) -> dict[str, Any] | FramingError:
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
    return data


#: The head of a line as the CLI writes it (JSON.stringify: compact, `type` first): an
#: object whose first member is `"type"` with a short plain string (no escapes).
_TYPE_FIRST = re.compile(rb'\{"type":"([A-Za-z0-9_.:/-]{1,64})"[,}]')


def cheap_type(line: bytes) -> str | None:
    """A line's `type`, from its first bytes alone; None when they do not say it plainly.

    Only the exact compact head `{"type":"NAME",` (or `}`) counts: the name spelled with
    escapes (`"\\u0074ype"`), whitespace, another member first, or an escaped value
    all give None, and the caller parses the whole line. The one thing the head cannot
    rule out is a second `type` member later in the same object (JSON.stringify, which
    writes the CLI's frames, never repeats a name).
    """
    match = _TYPE_FIRST.match(line)
    return match.group(1).decode("ascii") if match else None


def cheap_types(lines: Sequence[bytes]) -> list[str | None]:
    """`cheap_type` of each line, in one pass: the CLI's reader asks it of every line."""
    return [m[1].decode("ascii") if m else None for m in map(_TYPE_FIRST.match, lines)]


@attrs.frozen
class LongLineStart:
    """A line went over the cap: its first `max_line_bytes` bytes."""

    head: bytes


@attrs.frozen
class LongLinePart:
    """More of the over-long line, as it came."""

    data: bytes


@attrs.frozen
class LongLineEnd:
    """The over-long line ended (its newline, or the end of the stream); `size` in bytes."""

    size: int


StreamItem = bytes | LongLineStart | LongLinePart | LongLineEnd


class LineStreamer:
    """Cuts a byte stream into lines; a line over the cap comes out in pieces.

    A line up to `max_line_bytes` (without its newline) comes out whole, as bytes. A
    longer one comes out as `LongLineStart` (its first `max_line_bytes` bytes), then
    `LongLinePart`s as its bytes arrive, then `LongLineEnd`: never more than the cap is
    buffered.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        if max_line_bytes < 1:
            raise ValueError("max_line_bytes must be positive")
        self._max = max_line_bytes
        # The start of a line that earlier reads began, as they gave it: joined once,
        # when it ends (a 1 MB frame spans reads, and is then copied once, not per read).
        self._pieces: list[bytes] = []
        self._size = 0
        self._long: int | None = None  # bytes so far of an over-long line, if in one

    @property
    def max_line_bytes(self) -> int:
        return self._max

    def feed(self, data: bytes | bytearray) -> list[StreamItem]:
        """What one read gave: its complete lines and the pieces of an over-long one.

        A list, built in C as far as it can be: a read of a flood holds thousands of
        lines. Only the line an earlier read began (or one over the cap) takes the slow
        way; the others are the read's own slices (one split, no search per line).
        """
        *lines, rest = bytes(data).split(b"\n")
        items: list[StreamItem] = []
        if lines and (self._pieces or self._long is not None):
            items += self._take(lines[0])
            item = self._finish_line()
            if item is not None:
                items.append(item)
            del lines[0]
        if lines and max(map(len, lines)) > self._max:
            items += self._lines(lines)
        else:
            items += [line for line in lines if line and (line[0] not in _BLANK or line.strip())]
        if rest:
            items += self._take(rest)
        return items

    def _lines(self, lines: list[bytes]) -> Iterator[StreamItem]:
        for line in lines:
            if len(line) > self._max:
                yield from self._take(line)
                item = self._finish_line()
                if item is not None:
                    yield item
            elif line and (line[0] not in _BLANK or line.strip()):
                yield line

    def close(self) -> Iterator[StreamItem]:
        """End of stream: a last line without a newline still counts."""
        if self._pieces or self._long is not None:
            item = self._finish_line()
            if item is not None:
                yield item

    def _take(self, chunk: bytes) -> Iterator[StreamItem]:
        if not chunk:
            return
        if self._long is not None:
            self._long += len(chunk)
            yield LongLinePart(chunk)
        elif self._size + len(chunk) > self._max:
            self._long = self._size + len(chunk)
            cut = self._max - self._size
            head = b"".join([*self._pieces, chunk[:cut]])
            self._pieces.clear()
            self._size = 0
            yield LongLineStart(head)
            if len(chunk) > cut:
                yield LongLinePart(chunk[cut:])
        else:
            self._pieces.append(chunk)
            self._size += len(chunk)

    def _finish_line(self) -> StreamItem | None:
        if self._long is not None:
            size, self._long = self._long, None
            return LongLineEnd(size)
        line = b"".join(self._pieces)
        self._pieces.clear()
        self._size = 0
        if not line.strip():
            return None  # blank lines carry nothing; the CLI ignores them too
        return line


class LineSplitter:
    """Cuts a byte stream into lines; a line over the cap is dropped, as an error.

    Its bytes are not kept: one `FramingError("line_too_long")` comes when its newline
    arrives (or at the end of the stream), so memory stays bounded by the cap. A line of
    only whitespace is blank, whatever its length: nothing comes of it.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> None:
        self._lines = LineStreamer(max_line_bytes)
        self._blank = True  # the over-long line being dropped is only whitespace so far

    def feed(self, data: bytes | bytearray) -> Iterator[bytes | FramingError]:
        """Yields each complete line (without newline) or an error for an over-long one."""
        return self._whole(self._lines.feed(data))

    def close(self) -> Iterator[bytes | FramingError]:
        return self._whole(self._lines.close())

    def _whole(self, items: Iterable[StreamItem]) -> Iterator[bytes | FramingError]:
        for item in items:
            if isinstance(item, bytes):
                yield item
            elif isinstance(item, LongLineStart):
                self._blank = not _NOT_BLANK.search(item.head)
            elif isinstance(item, LongLinePart):
                self._blank = self._blank and not _NOT_BLANK.search(item.data)
            elif not self._blank:
                yield line_too_long(item.size, self._lines.max_line_bytes)


def line_too_long(size: int, cap: int, what: str = "it was dropped") -> FramingError:
    return FramingError(
        "line_too_long", f"a line of {size} bytes is over the cap of {cap} bytes; {what}"
    )


_SPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def read_head(head: bytes) -> dict[str, Any] | None:
    """What the head of an over-long line says it is: its leading members, as far as
    they are complete (an object cut short is read as far as it goes), or None when the
    head is not the start of a JSON object with a string `type`.

    The CLI writes most frames' `type` (and `subtype`) first, and a `control_response`
    its `request_id` before the answer, so a head of 1 KiB (the smallest cap) tells what
    they are, and one of our own answers from the parent's. Not a `result`: the real
    CLI writes its `type` after the answer (see `MemberScanner`).
    """
    text = head.decode("utf-8", errors="ignore")  # the cut may split a character
    start = _skip(text, 0)
    if not text.startswith("{", start):
        return None
    data = _partial_object(text, start, depth=8)
    return data if isinstance(data.get("type"), str) else None


def _partial_object(text: str, start: int, depth: int) -> dict[str, Any]:
    """The members of the object at `text[start]` (a `{`) up to where it is cut; objects
    cut short are read `depth` levels deep (a frame's useful fields are near the top)."""
    data: dict[str, Any] = {}
    i = start + 1
    while True:
        i = _skip(text, i)
        if not text.startswith('"', i):
            return data
        try:
            key, i = _DECODER.raw_decode(text, i)
        except ValueError:
            return data
        i = _skip(text, i)
        if not text.startswith(":", i):
            return data
        i = _skip(text, i + 1)
        try:
            data[key], i = _DECODER.raw_decode(text, i)
        except (ValueError, RecursionError):
            if depth > 0 and text.startswith("{", i):
                data[key] = _partial_object(text, i, depth - 1)
            return data
        i = _skip(text, i)
        if not text.startswith(",", i):
            return data
        i += 1


def starts_an_object(head: bytes) -> bool:
    return head.lstrip(b" \t\r").startswith(b"{")


class MemberScanner:
    """Finds the top-level members of a JSON object fed in pieces, in bounded memory.

    The real CLI writes a `result`'s `type` *after* its `result` (the answer, however
    long), so the head of an over-long result does not say what it is; this reads the
    whole line as it passes and keeps each top-level member whose key and value are short
    (`type`, `subtype`, `is_error`...). Strings are skipped by a regular expression, so a
    long answer costs little.
    """

    _STRING_BODY = re.compile(rb'(?:[^"\\]++|\\.)*+', re.DOTALL)
    _STRUCTURE = re.compile(rb'["{}\[\]:,]')
    LIMIT = 256

    def __init__(self) -> None:
        self.members: dict[str, Any] = {}
        self._depth = 0
        self._in_string = False
        self._escape = False  # a backslash ended the last piece, inside a string
        self._key: bytes | None = None
        self._buffer = bytearray()
        self._overflow = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        if self._escape and n:
            self._capture(data[:1])
            self._escape, i = False, 1
        while i < n:
            if self._in_string:
                end = self._STRING_BODY.match(data, i).end()  # type: ignore[union-attr]
                if end < n and data[end] == ord('"'):
                    self._capture(data[i : end + 1])
                    self._in_string, i = False, end + 1
                else:  # the string goes on in the next piece (maybe after a backslash)
                    self._capture(data[i:])
                    self._escape = end < n
                    return
                continue
            match = self._STRUCTURE.search(data, i)
            if match is None:
                self._capture(data[i:])
                return
            j = match.start()
            self._capture(data[i:j])
            self._structure(data[j : j + 1])
            i = j + 1

    def _structure(self, char: bytes) -> None:
        if char == b'"':
            self._in_string = True
            self._capture(char)
        elif char in (b"{", b"["):
            self._depth += 1
            if self._depth == 1:
                self._start_member()
            else:
                self._capture(char)
        elif char in (b"}", b"]"):
            if self._depth == 1:
                self._end_member()
            else:
                self._capture(char)
            self._depth -= 1
        elif self._depth == 1 and char == b":":
            self._key = None if self._overflow else bytes(self._buffer)
            self._buffer.clear()
            self._overflow = False
        elif self._depth == 1 and char == b",":
            self._end_member()
            self._start_member()
        else:
            self._capture(char)

    def _capture(self, data: bytes) -> None:
        if self._depth < 1 or self._overflow:
            return
        if len(self._buffer) + len(data) > self.LIMIT:
            self._overflow = True
            self._buffer.clear()
        else:
            self._buffer += data

    def _start_member(self) -> None:
        self._key = None
        self._buffer.clear()
        self._overflow = False

    def _end_member(self) -> None:
        if self._key is not None and not self._overflow:
            try:
                key, value = json.loads(self._key), json.loads(self._buffer)
            except ValueError:
                return
            if isinstance(key, str):
                self.members.setdefault(key, value)
        self._key = None


def _skip(text: str, i: int) -> int:
    match = _SPACE.match(text, i)
    return match.end() if match else i
