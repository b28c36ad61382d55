"""Many chats over a bounded number of live CLIs: `SessionPool`.

A chat is a key (a chat or thread id of the program's) with a CLI session id that
outlives its CLI. A chat is *live* while a supervised `Session` runs for it; at most
`max_active` are. A chat's turns wait in the pool (at most `max_queued` per chat) and are
handed to its session one at a time, so the pool decides, between two turns, whether the
chat keeps its CLI or gives it up to a chat that has waited longer.

Why one turn at a time: admission is fair only if a chat's CLI can be taken back between
turns. A chat with a burst of fifty messages would otherwise keep its CLI for all fifty
while the others wait; here it goes back to the end of the line when others are waiting
and no idle CLI can be evicted for them (first come, first served across chats).

Why no lock: every decision (admit, evict, yield) is made synchronously in `_schedule()`
between two checkpoints of the one trio thread, and every live chat is served by its own
task. Nothing waits on one chat's session while holding anything the others need, so a
wedged, crashing or stalled CLI only ever delays its own chat.
"""

from __future__ import annotations

import json
import logging
import os
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from types import MappingProxyType, TracebackType
from typing import Any, Literal

import attrs
import psutil
import trio

from . import _protocol as protocol
from ._errors import SessionClosedError, SessionFailedError, SupervisorError
from ._framing import DEFAULT_MAX_LINE_BYTES
from ._policy import EscalationPolicy
from ._pool_store import ChatRecord, PoolStore
from ._report import CancelReport
from ._session import Content, Session, Turn, find_claude, open_session

log = logging.getLogger("supervisor")

#: The CLI's own session flags: the pool chooses the session, so a chat's arguments
#: must not (they would fight with its --resume / --session-id).
_SESSION_FLAGS = frozenset({"--resume", "-r", "--session-id", "--continue", "-c", "--fork-session"})

#: What the CLI prints when asked to resume a session it has no transcript for.
_LOST_TRANSCRIPT = "No conversation found"

EvictionReason = Literal["lru", "idle", "fair_share", "export", "forget"]


# ------------------------------------------------------------------ public values


class QueueFullError(SupervisorError):
    """A chat already has `max_queued` turns waiting: this one was refused, not dropped."""

    def __init__(self, key: str, limit: int) -> None:
        super().__init__(
            f"chat {key!r} already has {limit} turns waiting (the pool's max_queued): "
            "this message was not queued; send it again once a turn has its result, "
            "or raise max_queued"
        )
        self.key = key
        self.limit = limit


class ChatBusyError(SupervisorError):
    """The chat has turns running or waiting, and the call needs it idle."""


@attrs.frozen
class PoolStats:
    """A snapshot of a pool, taken by `SessionPool.stats`; later changes don't touch it."""

    #: Chats with a live CLI (starting, serving, idle or being closed).
    live: int
    #: Chats waiting for a CLI (in the order they will get one).
    waiting: int
    #: Turns waiting in the pool (not yet handed to a CLI), per chat with any.
    queued: Mapping[str, int]
    #: Cancels that had a turn to cancel, by the rung that ended it ("interrupt", ...).
    cancels_by_path: Mapping[str, int]
    #: The same cancels by what asked for them (the report's `trigger`, when it has one).
    cancels_by_trigger: Mapping[str, int]
    #: CLIs started for a new session, and with --resume.
    started: int
    resumes: int
    #: Resumes that failed (the lost transcripts among them, which started a new session).
    failed_resumes: int
    lost_transcripts: int
    #: Live CLIs closed to make room (LRU idle, or a chat giving up its CLI to a waiting
    #: one), and closed after `idle_timeout`.
    evictions: int
    idle_closes: int
    #: Sends refused with `QueueFullError`.
    rejected: int


@attrs.frozen
class PoolEvent:
    """Something a program may want to know about a chat; see `on_event`."""

    key: str


@attrs.frozen
class ChatStarted(PoolEvent):
    """A CLI started for the chat: a new session, or its session resumed."""

    session_id: str
    resumed: bool


@attrs.frozen
class ChatEvicted(PoolEvent):
    """The chat's CLI was closed (gracefully); its session resumes on its next turn."""

    session_id: str
    reason: EvictionReason


@attrs.frozen
class TranscriptLost(PoolEvent):
    """The chat's session could not be resumed (its transcript is gone): it goes on in a
    new session, without the earlier history."""

    old_session_id: str
    new_session_id: str
    message: str


@attrs.frozen
class ChatFailed(PoolEvent):
    """The chat's CLI could not start or failed; the turn it was given has an error result,
    and the next turn starts it again."""

    session_id: str
    message: str


@attrs.frozen
class ChatExport:
    """Everything another host needs to resume a chat: its session and its transcript."""

    key: str
    session_id: str
    claude_args: tuple[str, ...] | None
    cwd: str
    transcript: bytes

    def to_json(self) -> str:
        return json.dumps(
            {
                "key": self.key,
                "session_id": self.session_id,
                "claude_args": None if self.claude_args is None else list(self.claude_args),
                "cwd": self.cwd,
                "transcript": self.transcript.decode("utf-8"),
            }
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> ChatExport:
        data = json.loads(text)
        args = data.get("claude_args")
        return cls(
            key=str(data["key"]),
            session_id=str(data["session_id"]),
            claude_args=None if args is None else tuple(str(a) for a in args),
            cwd=str(data["cwd"]),
            transcript=str(data["transcript"]).encode("utf-8"),
        )


def claude_transcript_path(config_dir: Path, cwd: str, session_id: str) -> Path:
    """Where the Claude Code CLI keeps a session's transcript: under its config directory,
    in `projects/<cwd with every character but letters and digits made a dash>/`."""
    return config_dir / "projects" / re.sub(r"[^A-Za-z0-9]", "-", cwd) / f"{session_id}.jsonl"


TranscriptLocator = Callable[[Path, str, str], Path]


# ------------------------------------------------------------------ internals


class _Pending:
    """A turn given to the pool: its content, and the `Turn` the caller holds."""

    def __init__(self, content: Content, turn: Turn) -> None:
        self.content = content
        self.turn = turn


class _Inflight:
    """A turn handed to the chat's session; frames are held back (`held`, with their
    sizes) while a resumed CLI has not yet proven that it found its transcript."""

    def __init__(self, pending: _Pending, turn: Turn, check_lost: bool) -> None:
        self.pending = pending
        self.session_turn = turn
        self.held: list[tuple[dict[str, Any], int]] | None = [] if check_lost else None


class _Chat:
    def __init__(self, record: ChatRecord) -> None:
        self.key = record.key
        self.session_id = record.session_id
        self.started = record.started
        self.claude_args = record.claude_args
        self.cwd = record.cwd
        self.pending: deque[_Pending] = deque()
        self.next_turn_id = 1
        self.session: Session | None = None
        self.inflight: _Inflight | None = None
        #: Turns given to the session by `supersede()` while a turn ran; they run next.
        self.superseding: deque[_Inflight] = deque()
        self.counted_report: CancelReport | None = None
        self.has_runner = False
        self.evict_reason: EvictionReason | None = None
        self.counted_evicting = False
        self.scope: trio.CancelScope | None = None
        self.wake = trio.Event()
        self.ready = trio.Event()
        self.done = trio.Event()
        self.done.set()
        self.last_used = 0.0

    def record(self) -> ChatRecord:
        return ChatRecord(self.key, self.session_id, self.started, self.claude_args, self.cwd)

    @property
    def idle(self) -> bool:
        """Live, nothing running or waiting, and not already on its way out."""
        return (
            self.session is not None
            and self.inflight is None
            and not self.superseding
            and not self.pending
            and self.evict_reason is None
        )


def _check_args(claude_args: Sequence[str]) -> tuple[str, ...]:
    args = tuple(claude_args)
    for arg in args:
        if arg.split("=", 1)[0] in _SESSION_FLAGS:
            raise ValueError(
                f"claude_args must not choose the session ({arg!r}): the pool gives each "
                "chat its own session id and resumes it"
            )
    return args


def _absolute(path: str | os.PathLike[str]) -> str:
    """A working directory as the store keeps it (and the CLI names its transcripts by)."""
    return os.path.abspath(os.fspath(path))


def _is_lost(frame: dict[str, Any]) -> bool:
    """Whether a resumed CLI's first result says its transcript is gone. The real CLI
    (2.1.x) writes a result of its own with the message in `errors`; a CLI that exits
    without one (the fake, older versions) leaves it in the supervisor's `result` text."""
    if frame.get("type") != "result" or not frame.get("is_error"):
        return False
    errors = frame.get("errors")
    texts = [str(frame.get("result")), *(errors if isinstance(errors, list) else [])]
    return any(_LOST_TRANSCRIPT in str(text) for text in texts)


def _lost_message(frame: dict[str, Any]) -> str:
    errors = frame.get("errors")
    found = (
        [str(e) for e in errors if _LOST_TRANSCRIPT in str(e)] if isinstance(errors, list) else []
    )
    return found[0] if found else str(frame.get("result"))


def _is_supervisor_error(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "system" and frame.get("subtype") == "supervisor_error"


def _fail_turn(turn: Turn, session_id: str | None, reason: str, message: str) -> None:
    frame = protocol.synthesized_result(
        session_id=session_id, duration_ms=0, terminal_reason=reason, message=message
    )
    turn._deliver(frame)


class SessionPool:
    """Supervised CLI sessions for many chats, at most `max_active` running at once.

    Use it as an async context manager; leaving the block closes every CLI gracefully
    and waits until none is left. See docs/library.md, "Session pools".
    """

    def __init__(
        self,
        claude_args: Sequence[str],
        *,
        claude: str | os.PathLike[str] | None = None,
        policy: EscalationPolicy | None = None,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        max_active: int = 8,
        max_queued: int = 10,
        idle_timeout: float | None = 600.0,
        store: str | os.PathLike[str] | None = None,
        min_available_memory: int | None = None,
        memory_poll_interval: float = 1.0,
        on_event: Callable[[PoolEvent], None] | None = None,
        transcript_path: TranscriptLocator = claude_transcript_path,
    ) -> None:
        if max_active < 1:
            raise ValueError(f"max_active must be at least 1, not {max_active}")
        if max_queued < 1:
            raise ValueError(f"max_queued must be at least 1, not {max_queued}")
        if idle_timeout is not None and not idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive (or None), not {idle_timeout}")
        if not memory_poll_interval > 0:
            raise ValueError(f"memory_poll_interval must be positive, not {memory_poll_interval}")
        if max_line_bytes < 1:
            raise ValueError(
                f"max_line_bytes must be a positive number of bytes, not {max_line_bytes}"
            )
        self._claude_args = _check_args(claude_args)
        self._claude = find_claude(claude)
        self._policy = policy or EscalationPolicy()
        self._cwd = os.path.abspath(os.fspath(cwd) if cwd is not None else os.getcwd())
        self._env = None if env is None else dict(env)
        self._max_line_bytes = max_line_bytes
        self.max_active = max_active
        self.max_queued = max_queued
        self.idle_timeout = idle_timeout
        self.min_available_memory = min_available_memory
        self._memory_poll_interval = memory_poll_interval
        self._on_event = on_event
        self._transcript_path = transcript_path
        self._store_path = store
        self._store: PoolStore | None = None
        self._chats: dict[str, _Chat] = {}
        self._waiting: deque[_Chat] = deque()
        self._live = 0
        self._evicting = 0
        self._polling_memory = False
        self._counts: Counter[str] = Counter()
        self._cancel_paths: Counter[str] = Counter()
        self._cancel_triggers: Counter[str] = Counter()
        self._entered = False
        self._closing = False
        self._all_closed = trio.Event()
        self._stack: AsyncExitStack | None = None
        self._nursery: trio.Nursery | None = None

    # -------------------------------------------------------------- lifetime

    async def __aenter__(self) -> SessionPool:
        if self._entered:
            raise RuntimeError("a SessionPool can be entered once")
        self._entered = True
        self._store = PoolStore(self._store_path)
        for record in self._store.load().values():
            self._chats[record.key] = _Chat(record)
        self._stack = AsyncExitStack()
        self._nursery = await self._stack.enter_async_context(trio.open_nursery())
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with trio.CancelScope(shield=True):
            await self.aclose()
        # Outside the shield: the nursery was opened outside it. Every chat's task has
        # ended by now; what is left (a memory poll) may be cancelled.
        if self._stack is not None:
            stack, self._stack = self._stack, None
            assert self._nursery is not None
            self._nursery.cancel_scope.cancel()
            await stack.aclose()
        if self._store is not None:
            self._store.close()
            self._store = None

    async def aclose(self) -> None:
        """Close every CLI gracefully (stdin EOF, `exit_timeout`, then the ladder) and wait
        until none is left; leaving the `async with` block does this, shielded. Turns still
        waiting in the pool get a `cancelled` result; later calls raise
        `SessionClosedError`."""
        if not self._closing:
            self._closing = True
            self._waiting.clear()
            for chat in self._chats.values():
                self._drop_pending(chat, "the pool was closed before this turn started")
                if chat.scope is not None:
                    chat.scope.cancel()
                chat.wake.set()
            if self._live == 0:
                self._all_closed.set()
        await self._all_closed.wait()

    # -------------------------------------------------------------- the chats' calls

    async def send(self, key: str, content: Content) -> Turn:
        """Queue a turn for the chat and return its `Turn` at once; the chat's CLI is
        started (or its session resumed) when the pool has room. Raises `QueueFullError`
        when the chat already has `max_queued` turns waiting."""
        chat = self._accept(key)
        pending = _Pending(content, Turn(chat.next_turn_id))
        chat.next_turn_id += 1
        chat.pending.append(pending)
        self._wake(chat)
        return pending.turn

    async def supersede(self, key: str, content: Content) -> Turn:
        """Cancel the chat's running turn (if any) and run this one next, before the
        turns already waiting; returns its `Turn` at once, as `Session.supersede` does."""
        chat = self._accept(key)
        pending = _Pending(content, Turn(chat.next_turn_id))
        chat.next_turn_id += 1
        if chat.session is not None and chat.inflight is not None:
            try:
                turn = await chat.session.supersede(content)
            except (SessionFailedError, SessionClosedError):
                pass  # the session is over: the turn waits for the chat's next CLI
            else:
                chat.superseding.append(_Inflight(pending, turn, False))
                return pending.turn
        chat.pending.appendleft(pending)
        self._wake(chat)
        return pending.turn

    async def cancel(self, key: str, *, cancel_queued: bool = False) -> CancelReport | None:
        """Cancel the chat's running turn through the ladder; None when none was running.

        `cancel_queued=True` also drops the chat's waiting turns (each gets a `cancelled`
        result)."""
        self._check_open()
        chat = self._chats.get(key)
        if chat is None:
            return None
        if cancel_queued:
            self._drop_pending(chat, "the turn was cancelled before it started (cancel_queued)")
        if chat.session is None or chat.inflight is None:
            return None
        try:
            report = await chat.session.cancel()
        except (SessionFailedError, SessionClosedError):
            return None  # the chat's next turn starts a new CLI
        self._count_cancel(chat, report)
        return report

    async def prewarm(self, key: str) -> bool:
        """Start the chat's CLI before its first turn, if the pool has a free slot (it never
        evicts for a pre-warm). Returns whether the chat's CLI is running."""
        self._check_open()
        chat = self._chat(key)
        if not chat.has_runner and not self._waiting and self._has_room():
            self._start(chat)
        if chat.has_runner:
            await chat.ready.wait()
        return chat.session is not None

    def configure(
        self,
        key: str,
        *,
        claude_args: Sequence[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> None:
        """Give a chat CLI arguments or a working directory of its own (instead of the
        pool's); they are stored with the chat and used from its next CLI start."""
        self._check_open()
        chat = self._chat(key)
        if claude_args is not None:
            chat.claude_args = _check_args(claude_args)
        if cwd is not None:
            chat.cwd = _absolute(cwd)
        self._persist(chat)

    def session_id(self, key: str) -> str | None:
        """The chat's session id (it survives eviction and restarts), None for a new key."""
        chat = self._chats.get(key)
        return None if chat is None else chat.session_id

    def keys(self) -> list[str]:
        return list(self._chats)

    @property
    def stats(self) -> PoolStats:
        queued = {key: len(c.pending) for key, c in self._chats.items() if c.pending}
        return PoolStats(
            live=self._live,
            waiting=len(self._waiting),
            queued=MappingProxyType(queued),
            cancels_by_path=MappingProxyType(dict(self._cancel_paths)),
            cancels_by_trigger=MappingProxyType(dict(self._cancel_triggers)),
            started=self._counts["started"],
            resumes=self._counts["resumes"],
            failed_resumes=self._counts["failed_resumes"],
            lost_transcripts=self._counts["lost_transcripts"],
            evictions=self._counts["evictions"],
            idle_closes=self._counts["idle_closes"],
            rejected=self._counts["rejected"],
        )

    # -------------------------------------------------------------- moving chats

    async def export_chat(self, key: str) -> ChatExport:
        """The chat's session and transcript, for `import_chat()` on another host. A live
        chat's CLI is closed first (gracefully, so the transcript is complete); a chat
        with turns running or waiting raises `ChatBusyError`."""
        chat = await self._quiesce(key, "export")
        if not chat.started:
            raise SupervisorError(f"chat {key!r} has no history yet: there is nothing to export")
        path = self._transcript_of(chat)
        try:
            transcript = await trio.Path(path).read_bytes()
        except FileNotFoundError:
            raise SupervisorError(
                f"chat {key!r}: its transcript is not at {path}: the CLI's config directory "
                "(CLAUDE_CONFIG_DIR or ~/.claude) must be the one the pool's CLIs use"
            ) from None
        return ChatExport(key, chat.session_id, chat.claude_args, self._cwd_of(chat), transcript)

    async def import_chat(
        self, export: ChatExport, *, cwd: str | os.PathLike[str] | None = None
    ) -> None:
        """Make an exported chat resumable here: its transcript is written where this
        host's CLI looks for it (under `cwd`, default the export's), and its session is
        stored under its key. Raises `ChatBusyError` if the key is busy here."""
        self._check_open()
        existing = self._chats.get(export.key)
        if existing is not None and (existing.has_runner or existing.pending):
            raise ChatBusyError(f"chat {export.key!r} is in use here: import it before using it")
        where = _absolute(cwd) if cwd is not None else export.cwd
        record = ChatRecord(export.key, export.session_id, True, export.claude_args, where)
        chat = _Chat(record)
        path = self._transcript_of(chat)
        await trio.Path(path.parent).mkdir(parents=True, exist_ok=True)
        await trio.Path(path).write_bytes(export.transcript)
        self._chats[export.key] = chat
        self._persist(chat)

    async def forget(self, key: str) -> None:
        """Close the chat's CLI if it runs and remove the chat (and its stored session).
        The transcript stays where the CLI wrote it."""
        await self._quiesce(key, "forget")
        del self._chats[key]
        assert self._store is not None
        self._store.delete(key)

    async def _quiesce(self, key: str, reason: EvictionReason) -> _Chat:
        self._check_open()
        chat = self._chats.get(key)
        if chat is None:
            raise KeyError(key)
        busy = ChatBusyError(
            f"chat {key!r} has turns running or waiting: wait for their results first"
        )
        if chat.pending or chat.inflight is not None:
            raise busy
        if chat.has_runner:
            if chat.evict_reason is None:
                chat.evict_reason = reason
            chat.wake.set()
            await chat.done.wait()
        if chat.pending or chat.has_runner:
            raise busy  # a turn came while the CLI was closing
        return chat

    def _config_dir(self) -> Path:
        env = self._env if self._env is not None else os.environ
        if env.get("CLAUDE_CONFIG_DIR"):
            return Path(env["CLAUDE_CONFIG_DIR"])
        return Path(env.get("HOME") or Path.home()) / ".claude"

    def _cwd_of(self, chat: _Chat) -> str:
        return chat.cwd or self._cwd

    def _transcript_of(self, chat: _Chat) -> Path:
        return self._transcript_path(self._config_dir(), self._cwd_of(chat), chat.session_id)

    # -------------------------------------------------------------- admission

    def _check_open(self) -> None:
        if not self._entered:
            raise SessionClosedError("enter the pool first: `async with SessionPool(...)`")
        if self._closing:
            raise SessionClosedError("the pool is closed; open a new one")

    def _chat(self, key: str) -> _Chat:
        chat = self._chats.get(key)
        if chat is None:
            record = ChatRecord(key, str(uuid.uuid4()), False, None, None)
            chat = self._chats[key] = _Chat(record)
            self._persist(chat)
        return chat

    def _accept(self, key: str) -> _Chat:
        self._check_open()
        chat = self._chat(key)
        if len(chat.pending) >= self.max_queued:
            self._counts["rejected"] += 1
            raise QueueFullError(key, self.max_queued)
        chat.last_used = trio.current_time()
        return chat

    def _wake(self, chat: _Chat) -> None:
        if chat.has_runner:
            chat.wake.set()
        elif chat not in self._waiting:
            self._waiting.append(chat)
        self._schedule()

    def _memory_ok(self) -> bool:
        if self.min_available_memory is None:
            return True
        return psutil.virtual_memory().available >= self.min_available_memory

    def _has_room(self) -> bool:
        return self._live < self.max_active and self._memory_ok()

    def _schedule(self) -> None:
        """Admit waiting chats while there is room; make room by evicting idle CLIs."""
        if self._closing:
            return
        while self._waiting:
            if self._live < self.max_active:
                if not self._memory_ok():
                    self._poll_memory()
                    return
                chat = self._waiting.popleft()
                if chat.pending and not chat.has_runner:
                    self._start(chat)
                continue
            needed = len(self._waiting) - self._evicting
            if needed > 0:
                idle = [c for c in self._chats.values() if c.idle]
                idle.sort(key=lambda c: c.last_used)
                for chat in idle[:needed]:
                    self._evict(chat, "lru")
            return

    def _evict(self, chat: _Chat, reason: EvictionReason) -> None:
        """Ask the chat's task to close its CLI; the slot it frees is counted as coming."""
        chat.evict_reason = reason
        if not chat.counted_evicting:
            chat.counted_evicting = True
            self._evicting += 1
        chat.wake.set()

    def _should_yield(self, chat: _Chat) -> bool:
        """After a turn: give the CLI up if chats wait that no eviction under way serves."""
        self._schedule()
        return bool(chat.pending) and len(self._waiting) > self._evicting

    def _poll_memory(self) -> None:
        if not self._polling_memory and self._nursery is not None:
            self._polling_memory = True
            self._nursery.start_soon(self._memory_poller)

    async def _memory_poller(self) -> None:
        try:
            while self._waiting and not self._closing and not self._memory_ok():
                await trio.sleep(self._memory_poll_interval)
        finally:
            self._polling_memory = False
        self._schedule()

    def _start(self, chat: _Chat) -> None:
        assert self._nursery is not None and not chat.has_runner
        self._live += 1
        chat.has_runner = True
        chat.evict_reason = None
        chat.ready = trio.Event()
        chat.done = trio.Event()
        self._nursery.start_soon(self._run_chat, chat)

    # -------------------------------------------------------------- one live chat

    async def _run_chat(self, chat: _Chat) -> None:
        try:
            await self._run_sessions(chat)
        except Exception:
            log.exception("supervisor: pool: chat %r failed unexpectedly", chat.key)
        finally:
            self._live -= 1
            if chat.counted_evicting:
                chat.counted_evicting = False
                self._evicting -= 1
            reason, chat.evict_reason = chat.evict_reason, None
            chat.session = None
            chat.has_runner = False
            chat.ready.set()
            chat.done.set()
            if reason == "idle":
                self._counts["idle_closes"] += 1
            elif reason in ("lru", "fair_share"):
                self._counts["evictions"] += 1
            if reason is not None:
                log.info("supervisor: pool: chat %r closed (%s)", chat.key, reason)
                self._emit(ChatEvicted(chat.key, chat.session_id, reason))
            if self._closing:
                if self._live == 0:
                    self._all_closed.set()
            else:
                if chat.pending and chat not in self._waiting:
                    self._waiting.append(chat)
                self._schedule()

    async def _run_sessions(self, chat: _Chat) -> None:
        """Serve the chat with one session, or two when its transcript turns out lost."""
        while not self._closing:
            resume = chat.started
            args = [*(chat.claude_args or self._claude_args)]
            args += ["--resume", chat.session_id] if resume else ["--session-id", chat.session_id]
            self._counts["resumes" if resume else "started"] += 1
            lost: str | None = None
            try:
                async with open_session(
                    args,
                    claude=self._claude,
                    policy=self._policy,
                    cwd=self._cwd_of(chat),
                    env=self._env,
                    max_line_bytes=self._max_line_bytes,
                ) as session:
                    lost = await self._serve(chat, session, resume)
            except SessionFailedError as exc:
                message = str(exc)
                if resume and _LOST_TRANSCRIPT in message:
                    lost = message
                else:
                    if resume:
                        self._counts["failed_resumes"] += 1
                    self._chat_failed(chat, message)
                    return
            finally:
                chat.session = None
                await self._drain(chat)
            if lost is None:
                return
            self._new_session(chat, lost)

    async def _serve(self, chat: _Chat, session: Session, resumed: bool) -> str | None:
        """Hand the chat's turns to its session, one at a time, until the chat is evicted,
        idle too long, gives up its CLI, or the pool closes. Returns the failure message
        when the resumed session's transcript turned out to be lost."""
        if self._closing:
            return None
        chat.session = session
        chat.ready.set()
        self._emit(ChatStarted(chat.key, chat.session_id, resumed))
        check_lost = resumed
        with trio.CancelScope() as chat.scope:
            while True:
                # An eviction asked for while the chat was idle stands even if a turn
                # came since: the chats waiting for a slot asked first.
                if not chat.superseding and (chat.evict_reason is not None or self._closing):
                    return None
                if not chat.pending and not chat.superseding:
                    if not await self._wait_for_work(chat):
                        chat.evict_reason = "idle"
                        return None
                    continue
                if chat.superseding:
                    inflight = chat.superseding.popleft()
                else:
                    pending = chat.pending.popleft()
                    try:
                        turn = await session.send(pending.content)
                    except (SessionFailedError, SessionClosedError):
                        chat.pending.appendleft(pending)  # a new CLI takes it
                        return None
                    inflight = _Inflight(pending, turn, check_lost)
                if not chat.started:
                    chat.started = True
                    self._persist(chat)
                chat.inflight = inflight
                lost = await self._forward(inflight)
                chat.inflight = None
                if lost is not None:
                    chat.pending.appendleft(inflight.pending)
                    return lost
                first_of_resume, check_lost = check_lost, False
                chat.last_used = trio.current_time()
                self._count_cancel(chat, session.last_report)
                if session.session_id is not None and session.session_id != chat.session_id:
                    chat.session_id = session.session_id
                    self._persist(chat)
                result = await inflight.session_turn.result()
                if result.get("terminal_reason") == "supervisor_failed":
                    if first_of_resume:
                        self._counts["failed_resumes"] += 1
                    self._chat_failed(chat, str(result.get("result")), deliver=False)
                    return None
                if not chat.superseding and self._should_yield(chat):
                    self._evict(chat, "fair_share")
                    return None
        return None  # the pool is closing

    async def _wait_for_work(self, chat: _Chat) -> bool:
        """Wait for a turn, an eviction or the close; False when `idle_timeout` passed."""
        chat.wake = trio.Event()
        if chat.pending or chat.evict_reason is not None or self._closing:
            return True
        if self.idle_timeout is None:
            await chat.wake.wait()
            return True
        with trio.move_on_after(self.idle_timeout):
            await chat.wake.wait()
            return True
        return bool(chat.pending)

    async def _forward(self, inflight: _Inflight) -> str | None:
        """Copy the session turn's frames to the caller's turn as they come. The copy
        never waits for the caller: the session counts what the caller's turn holds as
        its own turn's backlog (`Turn._relay_to`), so it is the session that stops
        reading the CLI when the caller falls behind, and lets go as for its own turns.

        A resumed CLI's first turn is held back until the CLI has written a frame of its
        own: if instead the resume fails for a lost transcript, the turn goes to a new
        session, unseen."""
        target = inflight.pending.turn
        async for frame, size in inflight.session_turn._relay_to(target):
            if inflight.held is not None:
                if _is_lost(frame):
                    return _lost_message(frame)
                if _is_supervisor_error(frame):
                    inflight.held.append((frame, size))
                    continue
                held, inflight.held = inflight.held, None
                for early, early_size in held:
                    target._put(early, early_size)
            target._put(frame, size)
        return None

    async def _drain(self, chat: _Chat) -> None:
        """After the session closed: the turns it was given have their results; pass them on."""
        inflights = [chat.inflight, *chat.superseding]
        chat.inflight = None
        chat.superseding.clear()
        for inflight in inflights:
            if inflight is None:
                continue
            target = inflight.pending.turn
            for early, size in inflight.held or []:
                target._put(early, size)
            async for frame, size in inflight.session_turn._relay_to(target):
                target._put(frame, size)

    def _count_cancel(self, chat: _Chat, report: CancelReport | None) -> None:
        """Count each cancel once: from `cancel()`, or from `last_report` (a supersede's)."""
        if report is None or report is chat.counted_report:
            return
        chat.counted_report = report
        self._cancel_paths[report.path] += 1
        trigger = getattr(report, "trigger", None)
        if trigger is not None:
            self._cancel_triggers[str(trigger)] += 1

    # -------------------------------------------------------------- failures and records

    def _new_session(self, chat: _Chat, message: str) -> None:
        old = chat.session_id
        chat.session_id = str(uuid.uuid4())
        chat.started = False
        self._persist(chat)
        self._counts["lost_transcripts"] += 1
        self._counts["failed_resumes"] += 1
        log.warning(
            "supervisor: pool: chat %r: session %s could not be resumed (its transcript is "
            "gone); it goes on in the new session %s",
            chat.key,
            old,
            chat.session_id,
        )
        self._emit(TranscriptLost(chat.key, old, chat.session_id, message))

    def _chat_failed(self, chat: _Chat, message: str, *, deliver: bool = True) -> None:
        """The CLI could not start (or failed): the turn it was to run gets the error."""
        log.warning("supervisor: pool: chat %r: %s", chat.key, message)
        if deliver and chat.pending:
            pending = chat.pending.popleft()
            _fail_turn(pending.turn, chat.session_id, "supervisor_failed", message)
        self._emit(ChatFailed(chat.key, chat.session_id, message))

    def _drop_pending(self, chat: _Chat, why: str) -> None:
        while chat.pending:
            _fail_turn(chat.pending.popleft().turn, chat.session_id, "cancelled", why)

    def _persist(self, chat: _Chat) -> None:
        if self._store is not None:
            self._store.put(chat.record())

    def _emit(self, event: PoolEvent) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(event)
        except Exception:
            log.exception("supervisor: pool: on_event raised for %r", event)
