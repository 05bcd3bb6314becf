"""What is left when a session's job dies: its outbox and its open voice_sessions row.

The sweeper runs in the worker's main process (never in a job), at start and then every
``JARVIS_SESSION_LOG__SWEEP_INTERVAL_S``:

1. Outboxes of dead jobs (agent/session_log.py): a file in the spool folder that no process
   holds locked belongs to a job that died (``kill -9`` included: the kernel drops the lock).
   Its rows are written to PostgreSQL in order (each at most once: they are keyed), then its
   session is ended as "interrompue" unless the outbox already held the session's end. While
   the database is down the file stays, and is tried again at the next sweep.
2. Sessions whose heartbeat stopped: an open session with no heartbeat for
   ``…__SWEEP_AFTER_S`` is ended as "interrompue" (a worker whose host died with its disk; a
   job that died on another host). A sweeper that could not reach the database within that
   window sweeps nothing: the live sessions' heartbeats need the database too.

The worker runs it rather than the token service because the outboxes are on the worker's
disk; the heartbeat sweep is an idempotent UPDATE, so every worker may run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.session_log import (
    END_INTERRUPTED,
    INTERRUPTED_SUMMARY,
    ROW_ERRORS,
    SPOOL_SUFFIX,
    read_spool,
    write_row,
)
from agent.settings import AgentSettings
from jarvis.db import create_pool

logger = logging.getLogger("jarvis.agent.sweeper")

_END_STALE = (
    "UPDATE voice_sessions SET outcome = 'interrompue', summary = $2,"
    " ended_at = greatest(started_at, heartbeat_at),"
    " duration_s = extract(epoch FROM greatest(started_at, heartbeat_at) - started_at)"
    " WHERE ended_at IS NULL AND coalesce(heartbeat_at, created_at) < now() - make_interval(secs => $1)"
    " RETURNING id::text"
)


@dataclass
class SweepResult:
    replayed_rows: int = 0
    ended_orphans: list[str] = field(default_factory=list)  # sessions whose outbox a dead job left
    ended_stale: list[str] = field(default_factory=list)  # sessions whose heartbeat stopped
    waiting_outboxes: int = 0  # orphan outboxes kept for the next sweep (database down)


def claim_orphan(path: Path) -> int | None:
    """The file, locked by us, if no live job holds it; else None. Blocking (run in a thread)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The job may have removed it (all rows sent) between our open and our lock.
        if os.stat(path).st_ino == os.fstat(fd).st_ino:
            return fd
    except (BlockingIOError, FileNotFoundError):
        pass
    os.close(fd)
    return None


class Sweeper:
    def __init__(self, settings: AgentSettings, pool: Any = None) -> None:
        self._settings = settings
        self._log = settings.session_log
        self._pool = pool
        self._db_ok_since: float | None = None

    async def run(self) -> None:
        """Sweep now and then every interval, until cancelled."""
        if self._pool is None:
            self._pool = await create_pool(
                self._settings.database_url, min_size=0, max_size=2, timeout_s=self._settings.db_timeout_s
            )
        try:
            while True:
                try:
                    await self.sweep_once()
                except Exception:  # a sweep that failed is tried again; the worker goes on
                    logger.exception("sweep failed")
                await asyncio.sleep(self._log.sweep_interval_s)
        finally:
            await self._pool.close()

    async def sweep_once(self) -> SweepResult:
        result = SweepResult()
        await self._replay_orphans(result)
        await self._end_stale_sessions(result)
        return result

    def _db_ok(self, ok: bool) -> None:
        if not ok:
            self._db_ok_since = None
        elif self._db_ok_since is None:
            self._db_ok_since = time.monotonic()

    async def _replay_orphans(self, result: SweepResult) -> None:
        folder = self._log.spool_dir
        if not folder.is_dir():
            return
        paths = await asyncio.to_thread(_outboxes_oldest_first, folder)
        for path in paths:
            fd = await asyncio.to_thread(claim_orphan, path)
            if fd is None:
                continue  # a live job's
            try:
                if not await self._replay(path, fd, result):
                    result.waiting_outboxes += 1
                    return  # the database is down: the other outboxes wait too
            finally:
                os.close(fd)

    async def _replay(self, path: Path, fd: int, result: SweepResult) -> bool:
        """The outbox's rows into PostgreSQL, then its session ended; True when the file is done."""
        rows = await asyncio.to_thread(read_spool, fd)
        what = f"outbox {path.name}"
        try:
            for row in rows:
                try:
                    await write_row(self._pool, row, self._settings.db_timeout_s)
                    result.replayed_rows += 1
                except ROW_ERRORS as exc:
                    logger.error("%s: a log row refused by the database (%s); skipped", what, type(exc).__name__)
            if rows and rows[-1].get("op") != "end":
                session_id = str(rows[0]["session_id"])
                last_heard = max(float(row["at"]) for row in rows)
                async with self._pool.acquire(timeout=self._settings.db_timeout_s) as conn:
                    await conn.execute(END_INTERRUPTED, session_id, last_heard, INTERRUPTED_SUMMARY)
                result.ended_orphans.append(session_id)
                logger.warning("session %s: its job died; %d log row(s) replayed, ended as interrompue",
                               session_id, len(rows))  # fmt: skip
        except Exception as exc:  # the database is not ready: every row waits for the next sweep
            self._db_ok(False)
            logger.info("%s: not replayed now (%s); kept for the next sweep", what, type(exc).__name__)
            return False
        self._db_ok(True)
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(os.unlink, path)
        return True

    async def _end_stale_sessions(self, result: SweepResult) -> None:
        try:
            async with self._pool.acquire(timeout=self._settings.db_timeout_s) as conn:
                await conn.execute("SELECT 1")
                self._db_ok(True)
                assert self._db_ok_since is not None
                if time.monotonic() - self._db_ok_since < self._log.sweep_after_s:
                    return  # just back: the live sessions' heartbeats have not had their chance
                ended = await conn.fetch(_END_STALE, self._log.sweep_after_s, INTERRUPTED_SUMMARY)
        except Exception as exc:
            self._db_ok(False)
            logger.debug("sweep: database unavailable (%s)", type(exc).__name__)
            return
        for row in ended:
            result.ended_stale.append(row["id"])
            logger.warning("session %s: no heartbeat for %.0f s, ended as interrompue", row["id"],
                           self._log.sweep_after_s)  # fmt: skip


def _outboxes_oldest_first(folder: Path) -> list[Path]:
    paths = []
    for path in folder.glob(f"*{SPOOL_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            paths.append((path.stat().st_mtime, path))
    return [path for _mtime, path in sorted(paths)]
