"""What a session pool remembers across restarts: each chat's session id, CLI arguments
and working directory, in SQLite (the standard library's `sqlite3`).

The store is small and written rarely (when a chat gets a session id or starts its first
turn), so it is written synchronously from the pool's trio task: a row is a few hundred
bytes, and WAL with `synchronous=NORMAL` keeps a commit well under a millisecond on a
local disk. A program that keeps the file on slow network storage should give each pool
a local file instead (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import attrs

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chats (
    key TEXT PRIMARY KEY,
    session_id TEXT NOT NULL,
    started INTEGER NOT NULL,
    claude_args TEXT,
    cwd TEXT,
    updated REAL NOT NULL
)
"""


@attrs.frozen
class ChatRecord:
    """One chat as stored: `started` says whether a turn has begun in its session, which
    is what makes the session resumable (the CLI writes no transcript before that)."""

    key: str
    session_id: str
    started: bool
    claude_args: tuple[str, ...] | None
    cwd: str | None


class PoolStore:
    """The key -> session map, in a SQLite file, or in memory when `path` is None."""

    def __init__(self, path: str | os.PathLike[str] | None) -> None:
        self.path = None if path is None else os.fspath(path)
        self._db = sqlite3.connect(":memory:" if self.path is None else self.path)
        if self.path is not None:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(_SCHEMA)
        self._db.commit()

    def close(self) -> None:
        self._db.close()

    def load(self) -> dict[str, ChatRecord]:
        rows = self._db.execute("SELECT key, session_id, started, claude_args, cwd FROM chats")
        return {row[0]: _record(row) for row in rows}

    def get(self, key: str) -> ChatRecord | None:
        row = self._db.execute(
            "SELECT key, session_id, started, claude_args, cwd FROM chats WHERE key = ?", (key,)
        ).fetchone()
        return None if row is None else _record(row)

    def put(self, record: ChatRecord) -> None:
        args = None if record.claude_args is None else json.dumps(list(record.claude_args))
        with self._db:
            self._db.execute(
                "INSERT INTO chats (key, session_id, started, claude_args, cwd, updated) "
                "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET "
                "session_id = excluded.session_id, started = excluded.started, "
                "claude_args = excluded.claude_args, cwd = excluded.cwd, "
                "updated = excluded.updated",
                (record.key, record.session_id, int(record.started), args, record.cwd, time.time()),
            )

    def delete(self, key: str) -> None:
        with self._db:
            self._db.execute("DELETE FROM chats WHERE key = ?", (key,))


def _record(row: tuple[str, str, int, str | None, str | None]) -> ChatRecord:
    args = None if row[3] is None else tuple(str(a) for a in json.loads(row[3]))
    return ChatRecord(
        key=row[0], session_id=row[1], started=bool(row[2]), claude_args=args, cwd=row[4]
    )
