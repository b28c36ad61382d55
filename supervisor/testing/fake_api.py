"""A scenario-driven fake of the Anthropic Messages API, for running the real CLI offline.

Why this exists: the supervisor must be tested against the real Claude Code CLI (its
framing, interrupt and signal behaviour are the thing being supervised), but tests
cannot reach the real API and must be deterministic. The CLI honours
``ANTHROPIC_BASE_URL``, so we point it at this loopback server, which streams
server-sent events the way the real API does and decides what to answer from the
prompt text itself. A test therefore scripts the model by what it sends as the user:

``hello``
    Answer ``reply #N to: hello``, where N counts the user messages in the request
    that carry typed text (not only tool results). After a respawn with ``--resume``
    the earlier turns are in ``messages`` again, so N proves resume continuity.
``[[api: bash=<shell command>]]``
    Answer with a ``tool_use`` block for the ``Bash`` tool; when the next request
    carries its ``tool_result``, answer ``tool done``.
``[[api: stall]]``
    Start the message (``message_start`` and a first text delta), then block until
    :meth:`FakeMessagesAPI.release_stalls` (the message then completes normally),
    :meth:`FakeMessagesAPI.close`, or the client hanging up.
``[[api: error]]`` / ``[[api: error=<status>]]`` / ``[[api: error=<status>:retry]]``
    Answer an HTTP error (default 500 ``api_error``) with ``x-should-retry: false``, so
    the CLI fails the turn promptly (``result`` with ``is_error: true``,
    ``terminal_reason: "api_error"``). With ``:retry`` the header is left out and the
    CLI's own retry policy applies, i.e. a turn that hangs in backoff.
``[[api: slow=S]]``
    Stream the normal reply in pieces spread over S seconds.

Only the *last text block of the last* ``"role": "user"`` message is read for a
directive: the CLI may append a ``system`` entry after it, prepends
``<system-reminder>`` blocks, and after an interrupted turn merges that turn's texts
into the next user message before the new text.

Use in-process (``with FakeMessagesAPI() as api: ...``; :meth:`FakeMessagesAPI.env`
gives the CLI's environment), or standalone for manual runs::

    python -m supervisor.testing.fake_api --port 8765

The server is a stdlib ``ThreadingHTTPServer`` in a background thread, so it works the
same under trio, asyncio or plain threads. Its waiting helpers block the calling
thread; from trio call them via ``trio.to_thread.run_sync`` with a timeout, or poll
:attr:`FakeMessagesAPI.request_count`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

__all__ = [
    "DIRECTIVE_RE",
    "FakeMessagesAPI",
    "Handled",
    "RequestLogEntry",
    "Scenario",
    "is_main_request",
    "last_user_message",
    "last_user_text",
    "parse_directive",
    "typed_user_texts",
]

JSONDict = dict[str, Any]

DIRECTIVE_RE: Final = re.compile(r"\[\[api:\s*(.*?)\s*\]\]", re.DOTALL)
"""Matches one ``[[api: ...]]`` directive; group 1 is its body."""

TOOL_DONE_TEXT: Final = "tool done"
STALL_FIRST_TEXT: Final = "stalling "
STALL_RELEASED_TEXT: Final = "released"

# Environment variables of the parent that would send the CLI elsewhere than the fake,
# change its auth or state folder, or make it think it runs nested inside another Claude
# Code session (a CLI's tools see CLAUDECODE, CLAUDE_PID, CLAUDE_CODE_SESSION_ID, ...).
# Narrow on purpose: anything else, e.g. the test audit's CLAUDE_SUPERVISOR_TEST_TOKEN,
# must reach the CLI and its tools.
_SCRUBBED_PREFIXES: Final = ("ANTHROPIC_", "CLAUDE_CODE_", "OTEL_")
_SCRUBBED_NAMES: Final = frozenset(
    {"CLAUDECODE", "CLAUDE_CONFIG_DIR", "CLAUDE_PID", "CLAUDE_EFFORT", "AWS_BEARER_TOKEN_BEDROCK"}
)

DEFAULT_ERROR_STATUS: Final = 500
"""Status of ``[[api: error]]``: 500 with ``x-should-retry: false`` fails the turn after
exactly one request. (A 400 ``invalid_request_error`` also fails promptly, but the CLI
first re-sends the request about five times with fallback variations.)"""

_ERROR_TYPES: Final = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}

Scenario = Literal["text", "bash", "stall", "error", "slow", "tool_done"]
"""What the fake decided to answer for one ``/v1/messages`` request."""


# --------------------------------------------------------------------------------------
# Reading a request
# --------------------------------------------------------------------------------------


def _blocks(message: Mapping[str, Any]) -> list[JSONDict]:
    """The content blocks of one message; a plain-string content is one text block."""
    content = message.get("content")
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if isinstance(content, list):
        return [b for b in content if isinstance(b, dict)]
    return []


def _is_reminder(text: str) -> bool:
    """True for the CLI's own ``<system-reminder>`` blocks, which no user typed."""
    return text.lstrip().startswith("<system-reminder>")


def last_user_message(body: Mapping[str, Any]) -> JSONDict | None:
    """The last ``"role": "user"`` entry of ``messages`` (later ``system`` entries skipped)."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return message
    return None


def last_user_text(body: Mapping[str, Any]) -> str | None:
    """The last non-reminder text block of the last user message, or None.

    This is "what was just asked": after an interrupted turn the CLI merges the old
    texts into the same message before the new one, so only the last block counts.
    """
    message = last_user_message(body)
    if message is None:
        return None
    for block in reversed(_blocks(message)):
        if block.get("type") == "text":
            text = block.get("text")
            if isinstance(text, str) and not _is_reminder(text):
                return text
    return None


def _ends_with_tool_result(message: Mapping[str, Any]) -> bool:
    """True if the message's last non-reminder block is a ``tool_result``."""
    for block in reversed(_blocks(message)):
        kind = block.get("type")
        if kind == "text" and _is_reminder(str(block.get("text", ""))):
            continue
        return kind == "tool_result"
    return False


def typed_user_texts(body: Mapping[str, Any]) -> list[str]:
    """Texts the user typed, one entry per user message that carries any, in order.

    A message counts if it has a text block that is not a ``<system-reminder>`` (tool
    result messages do not count). Its entry is its last such text block, i.e. what was
    asked in that turn. ``len()`` of this is the N of ``reply #N``.
    """
    out: list[str] = []
    messages = body.get("messages")
    if not isinstance(messages, list):
        return out
    for message in messages:
        if not isinstance(message, dict) or message.get("role") != "user":
            continue
        texts = [
            str(b.get("text", ""))
            for b in _blocks(message)
            if b.get("type") == "text" and not _is_reminder(str(b.get("text", "")))
        ]
        if texts:
            out.append(texts[-1])
    return out


def is_main_request(body: Mapping[str, Any]) -> bool:
    """True for a conversation turn of the CLI's main loop, as opposed to side calls.

    The main loop always sends its tool list; auxiliary calls a CLI may make (titles,
    summaries, quota probes) send none. With ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC``
    2.1.328 was seen making main-loop calls only, but a later version may not.
    """
    tools = body.get("tools")
    return isinstance(tools, list) and len(tools) > 0


#: A request in plain words that the fake answers with a Bash call, as a model would:
#: the demo's prompts for a real CLI use it, so they also run offline against this fake.
PLAIN_BASH_REQUEST = "Use the Bash tool to run exactly this command: "


def parse_directive(text: str | None) -> tuple[str, str] | None:
    """Return ``(name, argument)`` of the first ``[[api: name=arg]]`` in *text*, or None.

    A text that starts with `PLAIN_BASH_REQUEST` counts as ``[[api: bash=<the rest>]]``.
    """
    if not text:
        return None
    if text.startswith(PLAIN_BASH_REQUEST):
        return "bash", text[len(PLAIN_BASH_REQUEST) :].strip()
    match = DIRECTIVE_RE.search(text)
    if match is None:
        return None
    name, _, arg = match.group(1).partition("=")
    return name.strip().lower(), arg.strip()


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


class RequestLogEntry:
    """One HTTP request the fake received (any endpoint), for finding out what the CLI calls."""

    __slots__ = ("body", "method", "path", "status", "time")

    def __init__(self, method: str, path: str, body: JSONDict | None, status: int) -> None:
        self.method = method
        self.path = path
        self.body = body
        self.status = status
        self.time = time.monotonic()

    def __repr__(self) -> str:
        return f"RequestLogEntry({self.method} {self.path} -> {self.status})"


class Handled:
    """What the fake answered to one ``/v1/messages`` request (index into ``requests``)."""

    __slots__ = ("completed", "index", "scenario", "tool_use_id")

    def __init__(self, index: int, scenario: Scenario, tool_use_id: str | None) -> None:
        self.index = index
        self.scenario: Scenario = scenario
        self.tool_use_id = tool_use_id
        self.completed = False
        """True once the whole answer was written (False if the client hung up)."""

    def __repr__(self) -> str:
        return f"Handled(#{self.index} {self.scenario} completed={self.completed})"


class _ClientGone(Exception):
    """The client closed the connection while we were streaming (e.g. an interrupt)."""


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    """ThreadingHTTPServer that joins its handler threads on close.

    ``block_on_close`` with non-daemon handler threads makes ``server_close()`` wait for
    them; :meth:`FakeMessagesAPI.close` first unblocks every stalled stream so that the
    join is prompt.
    """

    daemon_threads = False
    block_on_close = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: FakeMessagesAPI) -> None:
        self.api = api
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Routes one HTTP request to :class:`FakeMessagesAPI`. One request per connection."""

    server: _Server
    protocol_version = "HTTP/1.1"
    # Without a socket timeout a client that connects and sends nothing would hold a
    # handler thread forever and block close(); the CLI always sends at once.
    timeout = 30.0

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log; see ``FakeMessagesAPI.log`` instead."""

    # -- plumbing -------------------------------------------------------------------

    def _read_body(self) -> JSONDict | None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if not raw:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    def send_json(self, status: int, payload: object, headers: Mapping[str, str] = {}) -> None:
        """Send a complete JSON response and close the connection."""
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_fake_{id(self):x}")
        self.send_header("Connection", "close")
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()
        self.close_connection = True

    def start_sse(self) -> None:
        """Send the headers of an event stream; the body ends when the connection closes."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", f"req_fake_{id(self):x}")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def sse(self, event: str, data: JSONDict) -> None:
        """Write one server-sent event; raise _ClientGone if the client hung up."""
        try:
            self.wfile.write(f"event: {event}\ndata: {json.dumps(data)}\n\n".encode())
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, OSError) as exc:
            raise _ClientGone from exc

    def block_start(self, block: JSONDict) -> None:
        """Open content block 0 (the fake always answers with a single block)."""
        self.sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        )

    def block_delta(self, delta: JSONDict) -> None:
        """Append to content block 0."""
        self.sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})

    def wait_or_gone(self, release: threading.Event, timeout: float | None) -> bool:
        """Block until *release* is set (True), *timeout* passes (False), or the client
        hangs up (_ClientGone). Hang-up is seen as the socket turning readable with EOF,
        so a stalled stream needs no pings to notice an interrupted CLI."""
        deadline = None if timeout is None else time.monotonic() + timeout
        sock: socket.socket = self.connection
        while True:
            if release.is_set():
                return True
            step = 0.05
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                step = min(step, left)
            try:
                readable, _, _ = select.select([sock], [], [], step)
                if readable:
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        raise _ClientGone
                    time.sleep(step)  # unexpected client bytes: do not spin on them
            except (OSError, ValueError) as exc:
                raise _ClientGone from exc

    # -- routes ---------------------------------------------------------------------

    def do_POST(self) -> None:
        """``/v1/messages`` streams or answers; count_tokens estimates; else 404."""
        body = self._read_body()
        path = self.path.split("?", 1)[0].rstrip("/")
        api = self.server.api
        if path.endswith("/v1/messages") and body is not None:
            api._handle_messages(self, body)
        elif path.endswith("/v1/messages/count_tokens"):
            api._log(self.command, self.path, body, 200)
            size = len(json.dumps(body or {}))
            self.send_json(200, {"input_tokens": max(1, size // 4)})
        else:
            self._not_found(body)

    def do_GET(self) -> None:
        """Answer a few GETs the SDKs are known to make; anything else is a quick 404."""
        path = self.path.split("?", 1)[0].rstrip("/")
        if path.endswith("/v1/models"):
            self.server.api._log(self.command, self.path, None, 200)
            self.send_json(200, {"data": [], "has_more": False, "first_id": None, "last_id": None})
        elif path in ("", "/", "/health", "/api/hello"):
            self.server.api._log(self.command, self.path, None, 200)
            self.send_json(200, {"ok": True})
        else:
            self._not_found(None)

    def do_HEAD(self) -> None:
        """Connectivity checks: a bare 200."""
        self.server.api._log(self.command, self.path, None, 200)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def _not_found(self, body: JSONDict | None) -> None:
        """A prompt, non-retryable 404 so unknown side calls fail fast, never stall."""
        self.server.api._log(self.command, self.path, body, 404)
        self.send_json(
            404,
            {"type": "error", "error": {"type": "not_found_error", "message": "fake api"}},
            {"x-should-retry": "false"},
        )


class FakeMessagesAPI:
    """A fake Messages API on ``127.0.0.1:<port>`` (port 0: any free port), served from a
    background thread. See the module docstring for the scenario directives.

    Thread-safe: records are guarded by one lock/condition; the accessors return copies.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, model_delay: float = 0.0):
        """Start serving at once. *model_delay* adds latency before every streamed answer."""
        self._cond = threading.Condition()
        self._requests: list[JSONDict] = []
        self._handled: list[Handled] = []
        self._log_entries: list[RequestLogEntry] = []
        self._stalled = 0
        self._ids = 0
        self._release = threading.Event()
        self._closing = threading.Event()
        self.model_delay = model_delay
        self.request_arrived = threading.Event()
        """Set whenever a ``/v1/messages`` request arrives; a test may ``clear()`` it."""
        self._server = _Server((host, port), self)
        self.host: str = host
        self.port: int = self._server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fake-api:{self.port}",
            daemon=True,
        )
        self._thread.start()

    # -- lifecycle ------------------------------------------------------------------

    def close(self) -> None:
        """Release stalled streams (they are cut, not completed), stop serving, join threads.

        Idempotent. Streams still being written end with a dropped connection.
        """
        if self._closing.is_set():
            return
        self._closing.set()
        with self._cond:
            self._cond.notify_all()
        self._server.shutdown()
        self._server.server_close()  # joins handler threads (block_on_close)
        self._thread.join()

    def __enter__(self) -> FakeMessagesAPI:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """The environment for a CLI that talks to this fake and keeps its state in *home*.

        Starts from ``os.environ`` (PATH, locale, CA settings, the test audit's token)
        minus variables that would redirect or re-authenticate the CLI, move its state out
        of *home*, or make it think it is nested in another Claude Code session
        (``ANTHROPIC_*``, ``CLAUDE_CODE_*``, ``OTEL_*``, ``CLAUDECODE``,
        ``CLAUDE_CONFIG_DIR``, ``CLAUDE_PID``, ...); *extra* is applied last. The CLI
        passes this environment on to its Bash tool's processes.
        """
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(_SCRUBBED_PREFIXES) and k not in _SCRUBBED_NAMES
        }
        env.update(
            {
                "ANTHROPIC_BASE_URL": self.url,
                "ANTHROPIC_API_KEY": "sk-test",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_TELEMETRY": "1",
                "DISABLE_AUTOUPDATER": "1",
                "DISABLE_ERROR_REPORTING": "1",
                "HOME": str(home),
                "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost",
            }
        )
        env.update(extra)
        return env

    # -- records --------------------------------------------------------------------

    @property
    def requests(self) -> list[JSONDict]:
        """JSON bodies of every ``POST /v1/messages`` received, oldest first (a copy)."""
        with self._cond:
            return list(self._requests)

    @property
    def request_count(self) -> int:
        """How many ``POST /v1/messages`` arrived so far (cheap to poll)."""
        with self._cond:
            return len(self._requests)

    @property
    def handled(self) -> list[Handled]:
        """What was answered to each request, parallel to :attr:`requests`."""
        with self._cond:
            return list(self._handled)

    @property
    def log(self) -> list[RequestLogEntry]:
        """Every HTTP request on any path, to see what else the CLI calls."""
        with self._cond:
            return list(self._log_entries)

    @property
    def stalled_count(self) -> int:
        """How many streams are stalled right now."""
        with self._cond:
            return self._stalled

    def last_request(self) -> JSONDict:
        """The body of the latest ``/v1/messages`` request; IndexError if none yet."""
        with self._cond:
            return self._requests[-1]

    def last_user_texts(self) -> list[str]:
        """The typed user texts of the latest request (see :func:`typed_user_texts`)."""
        return typed_user_texts(self.last_request())

    # -- waiting --------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(
                lambda: predicate() or self._closing.is_set(), timeout=timeout
            ):
                raise TimeoutError(f"fake api: no {what} within {timeout} s")
            if not predicate():
                raise RuntimeError(f"fake api closed while waiting for {what}")

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> JSONDict:
        """Block until at least *count* ``/v1/messages`` requests arrived; return the
        *count*-th body (1-based). TimeoutError after *timeout* seconds."""
        self._wait(lambda: len(self._requests) >= count, timeout, f"request #{count}")
        with self._cond:
            return self._requests[count - 1]

    def wait_for_scenario(
        self, scenario: Scenario, timeout: float = 30.0, *, after: int = 0
    ) -> Handled:
        """Block until a request with index >= *after* got *scenario* (e.g. ``"bash"``:
        the tool_use was streamed in full, so the CLI is about to run the tool)."""

        def find() -> Handled | None:
            for h in self._handled[after:]:
                if h.scenario == scenario and (h.completed or scenario == "stall"):
                    return h
            return None

        self._wait(lambda: find() is not None, timeout, f"{scenario!r} answer")
        with self._cond:
            found = find()
        assert found is not None
        return found

    def wait_for_stall(self, timeout: float = 30.0) -> None:
        """Block until a stream is stalled (``[[api: stall]]`` reached its stall point)."""
        self._wait(lambda: self._stalled > 0, timeout, "stalled stream")

    def release_stalls(self) -> None:
        """Let every stalled stream (now and later) complete its message normally.

        Call :meth:`rearm_stalls` to make later ``stall`` directives stall again.
        """
        self._release.set()
        with self._cond:
            self._cond.notify_all()

    def rearm_stalls(self) -> None:
        """Undo :meth:`release_stalls` for streams that stall from now on."""
        self._release.clear()

    # -- internals ------------------------------------------------------------------

    def _log(self, method: str, path: str, body: JSONDict | None, status: int) -> None:
        with self._cond:
            self._log_entries.append(RequestLogEntry(method, path, body, status))

    def _next_id(self, prefix: str) -> str:
        with self._cond:
            self._ids += 1
            return f"{prefix}_fake{self._ids:06d}"

    def _record(self, body: JSONDict, scenario: Scenario, tool_id: str | None) -> Handled:
        with self._cond:
            handled = Handled(len(self._requests), scenario, tool_id)
            self._requests.append(body)
            self._handled.append(handled)
            self._cond.notify_all()
        self.request_arrived.set()
        return handled

    def _set_completed(self, handled: Handled) -> None:
        with self._cond:
            handled.completed = True
            self._cond.notify_all()

    def _choose(self, body: JSONDict) -> tuple[Scenario, str, str | None]:
        """Decide the scenario for a request: (scenario, argument, reply text)."""
        message = last_user_message(body)
        if message is not None and _ends_with_tool_result(message):
            return "tool_done", "", TOOL_DONE_TEXT
        text = last_user_text(body) or ""
        reply = f"reply #{len(typed_user_texts(body))} to: {text}"
        directive = parse_directive(text)
        if directive is None:
            return "text", "", reply
        name, arg = directive
        if name == "bash":
            return "bash", arg, None
        if name == "stall":
            return "stall", arg, None
        if name == "error":
            return "error", arg, None
        if name == "slow":
            return "slow", arg, reply
        return "text", "", f"unknown directive {name!r}; " + reply

    def _handle_messages(self, h: _Handler, body: JSONDict) -> None:
        scenario, arg, reply = self._choose(body)
        tool_id = self._next_id("toolu") if scenario == "bash" else None
        handled = self._record(body, scenario, tool_id)
        status = 200
        if scenario == "error":
            text_status = arg.partition(":")[0].strip()
            status = int(text_status) if text_status.isdigit() else DEFAULT_ERROR_STATUS
        self._log(h.command, h.path, body, status)
        model = str(body.get("model") or "claude-fake")
        try:
            if scenario == "error":
                self._send_error(h, arg)
                self._set_completed(handled)
                return
            if not body.get("stream"):
                self._send_whole(h, model, scenario, arg, reply, tool_id)
                self._set_completed(handled)
                return
            if self.model_delay > 0 and h.wait_or_gone(self._closing, self.model_delay):
                return
            self._stream(h, model, scenario, arg, reply, tool_id, handled)
        except _ClientGone:
            return

    @staticmethod
    @staticmethod
    def _send_error(h: _Handler, arg: str) -> int:
        """Answer ``error[=<status>[:retry]]``; return the status sent.

        Without ``:retry`` the answer carries ``x-should-retry: false``, which the CLI
        honours: one request, then a failed turn. With ``:retry`` the header is left
        out, so the CLI's own retry policy applies (backoff for 5xx/429).
        """
        status_text, _, flag = arg.partition(":")
        status = int(status_text) if status_text.strip().isdigit() else DEFAULT_ERROR_STATUS
        kind = _ERROR_TYPES.get(status, "api_error")
        headers = {} if flag.strip() == "retry" else {"x-should-retry": "false"}
        h.send_json(
            status,
            {"type": "error", "error": {"type": kind, "message": f"fake api error ({status})"}},
            headers,
        )
        return status

    def _message_shell(self, model: str) -> JSONDict:
        return {
            "id": self._next_id("msg"),
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "output_tokens": 1,
                "cache_creation_input_tokens": 0,
                "cache_read_input_tokens": 0,
            },
        }

    @staticmethod
    def _bash_input(command: str) -> JSONDict:
        return {"command": command, "description": "fake api tool"}

    def _send_whole(
        self,
        h: _Handler,
        model: str,
        scenario: Scenario,
        arg: str,
        reply: str | None,
        tool_id: str | None,
    ) -> None:
        """A non-streaming answer (the CLI's side calls may use ``"stream": false``)."""
        msg = self._message_shell(model)
        if scenario == "bash" and tool_id is not None:
            msg["content"] = [
                {"type": "tool_use", "id": tool_id, "name": "Bash", "input": self._bash_input(arg)}
            ]
            msg["stop_reason"] = "tool_use"
        else:
            msg["content"] = [{"type": "text", "text": reply or STALL_RELEASED_TEXT}]
            msg["stop_reason"] = "end_turn"
        h.send_json(200, msg)

    def _stream(
        self,
        h: _Handler,
        model: str,
        scenario: Scenario,
        arg: str,
        reply: str | None,
        tool_id: str | None,
        handled: Handled,
    ) -> None:
        h.start_sse()
        h.sse("message_start", {"type": "message_start", "message": self._message_shell(model)})
        stop_reason = "end_turn"
        if scenario == "bash" and tool_id is not None:
            stop_reason = "tool_use"
            h.block_start({"type": "tool_use", "id": tool_id, "name": "Bash", "input": {}})
            partial = json.dumps(self._bash_input(arg))
            half = len(partial) // 2
            for piece in (partial[:half], partial[half:]):
                h.block_delta({"type": "input_json_delta", "partial_json": piece})
        else:
            h.block_start({"type": "text", "text": ""})
            for piece in self._text_pieces(h, scenario, arg, reply or "", handled):
                h.block_delta({"type": "text_delta", "text": piece})
        h.sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        h.sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                "usage": {"output_tokens": 5},
            },
        )
        h.sse("message_stop", {"type": "message_stop"})
        self._set_completed(handled)

    def _text_pieces(
        self, h: _Handler, scenario: Scenario, arg: str, reply: str, handled: Handled
    ) -> Iterator[str]:
        """The text deltas to stream; for stall and slow, a generator that waits between."""
        if scenario == "stall":
            return self._stall_pieces(h)
        if scenario == "slow":
            try:
                seconds = max(0.0, float(arg))
            except ValueError:
                seconds = 1.0
            return self._slow_pieces(h, reply, seconds)
        return iter([reply])

    def _stall_pieces(self, h: _Handler) -> Iterator[str]:
        yield STALL_FIRST_TEXT
        with self._cond:
            self._stalled += 1
            self._cond.notify_all()
        try:
            released = False
            while not released:
                if self._closing.is_set():
                    raise _ClientGone  # close(): cut the stream
                released = h.wait_or_gone(self._release, 0.1)
        finally:
            with self._cond:
                self._stalled -= 1
                self._cond.notify_all()
        yield STALL_RELEASED_TEXT

    def _slow_pieces(self, h: _Handler, reply: str, seconds: float) -> Iterator[str]:
        words = reply.split(" ")
        pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
        pause = seconds / max(1, len(pieces))
        for piece in pieces:
            if h.wait_or_gone(self._closing, pause):
                raise _ClientGone  # close() while streaming slowly
            yield piece


def main(argv: Sequence[str] | None = None) -> int:
    """Serve until killed, printing the URL (for manual runs of the CLI)."""
    parser = argparse.ArgumentParser(
        prog="python -m supervisor.testing.fake_api",
        description="Serve a scenario-driven fake Anthropic Messages API on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--verbose", "-v", action="store_true", help="log each request")
    args = parser.parse_args(argv)
    api = FakeMessagesAPI(args.host, args.port)
    print(api.url, flush=True)
    seen = 0
    try:
        while True:
            time.sleep(0.2)
            if args.verbose:
                entries = api.log
                for entry in entries[seen:]:
                    print(f"{entry.method} {entry.path} -> {entry.status}", file=sys.stderr)
                seen = len(entries)
    except KeyboardInterrupt:
        pass
    finally:
        with contextlib.suppress(Exception):
            api.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
