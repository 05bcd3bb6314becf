"""The session's record for the gym manager: voice_sessions + jarvis_interactions.

Rows are written as the conversation happens and never on its path: each row is first
appended to the session's outbox, a file on the worker's local disk (fsync'd, one JSON line
a row), then sent to PostgreSQL in order by one background writer that retries as long as
the database is down. A row the member said is on disk within one fsync; a `kill -9` of the
job loses nothing already spooled, and the worker's sweeper (agent/sweeper.py) replays the
outboxes their jobs left behind. Each row has a stable id, so a replay inserts it at most once.
The summary and sentiment are computed after the session ends.

Why a local file and not a Redis stream: Redis here holds only what can be rebuilt (it runs
without persistence, and issue 13 requires that losing Redis loses no session record), and a
file append + fsync survives the death of the process, of Redis and of PostgreSQL alike, with
no further service to reach. What it does not survive is the loss of the host's disk: then
the sweeper on another host ends the session from its stale heartbeat, and the rows not yet
sent are lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import fcntl
import json
import logging
import os
import re
import time
import unicodedata
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import asyncpg
from livekit.agents import AgentSession
from livekit.agents.llm import ChatMessage, FunctionCall, FunctionCallOutput
from livekit.agents.voice.events import CloseEvent, ConversationItemAddedEvent, FunctionToolsExecutedEvent

from agent.settings import AgentSettings, SessionLogSettings
from jarvis.context import MemberContext
from jarvis.settings import DB_TIMEOUT_S

logger = logging.getLogger("jarvis.agent.session_log")

Sentiment = Literal["positive", "neutral", "negative"]

RETRY_FIRST_S = 0.2
RETRY_MAX_S = 2.0
INTERRUPTED = "interrompue"
INTERRUPTED_SUMMARY = "Session interrompue : JARVIS s'est arrêté avant la fin."
SPOOL_SUFFIX = ".jsonl"

_NEGATIVE_WORDS = (
    "marre", "nul", "nulle", "frustre", "decu", "decue", "enerve", "agace", "resilier", "resiliation",
    "arreter", "abandonner", "trop cher", "inadmissible", "scandale", "jamais disponible",
    "toujours en panne", "en panne", "sale", "attente", "pas content", "pas contente", "degoute",
)  # fmt: skip
_POSITIVE_WORDS = ("merci", "super", "genial", "parfait", "top", "trop bien", "content", "contente", "cool")

_TOOL_SUMMARIES: dict[str, str] = {
    "display_video_tutorial": "vidéo d'exercice montrée",
    "contact_coach": "coach prévenu",
    "book_session": "séance réservée",
    "log_churn_risk": "risque de départ signalé",
    "get_gym_info": "infos de la salle données",
    "get_member_stats": "statistiques consultées",
    "create_mission": "mission créée pour l'équipe",
}


def _plain(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()


@dataclass
class _Interaction:
    kind: Literal["user", "agent", "tool"]
    text: str | None = None
    tool_name: str | None = None
    tool_args: Any = None
    tool_result: Any = None
    latency_ms: float | None = None
    interrupted: bool = False  # an agent line the member talked over (barge-in)


@dataclass
class SessionRecord:
    """What the summary is computed from, kept in memory as the session goes."""

    user_turns: list[str] = field(default_factory=list)
    agent_turns: list[str] = field(default_factory=list)
    tools: list[tuple[str, bool]] = field(default_factory=list)  # (name, succeeded)
    error: str | None = None


def summarize(record: SessionRecord) -> tuple[str, Sentiment]:
    """A short French summary for the manager and the member's overall sentiment."""
    done: list[str] = []
    for name, ok in record.tools:
        label = _TOOL_SUMMARIES.get(name, f"outil {name}")
        label = label if ok else f"échec : {label}"
        if label not in done:
            done.append(label)
    if done:
        summary = "; ".join(done).capitalize() + "."
    elif record.user_turns:
        first = record.user_turns[0]
        summary = f"Question sans action : « {first[:120]}{'…' if len(first) > 120 else ''} »."
    else:
        summary = "Aucun échange."

    said = " ".join(_plain(t) for t in record.user_turns)
    negatives = sum(1 for w in _NEGATIVE_WORDS if re.search(rf"\b{w}\b", said))
    positives = sum(1 for w in _POSITIVE_WORDS if re.search(rf"\b{w}\b", said))
    churn = any(name == "log_churn_risk" and ok for name, ok in record.tools)
    sentiment: Sentiment
    if churn or negatives > positives:
        sentiment = "negative"
    elif positives > 0:
        sentiment = "positive"
    else:
        sentiment = "neutral"
    return summary, sentiment


# --- the outbox: one file per session's job, rows appended in order --------------------------

Row = dict[str, Any]


class SpoolFull(Exception):
    """The outbox folder reached JARVIS_SESSION_LOG__SPOOL_MAX_MB."""


class Spool:
    """One job's outbox file for one session, locked (flock) for as long as its job lives.

    The kernel drops the lock when the process dies, however it dies: an unlocked file is an
    orphan the sweeper may replay. Files are created under a temporary name and renamed once
    locked, so the sweeper never takes a file its job is still opening.
    """

    def __init__(self, path: Path, fd: int, max_bytes: int) -> None:
        self.path = path
        self._fd = fd
        self._max_bytes = max_bytes
        self._size = 0

    @classmethod
    def create(cls, directory: Path, session_id: str, max_bytes: int) -> Spool:
        directory.mkdir(parents=True, exist_ok=True)
        # A second job for the same session (a rejoin) gets its own file: rows never interleave.
        name = f"{session_id}.{uuid.uuid4().hex[:12]}"
        opening = directory / f"{name}.new"
        fd = os.open(opening, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        path = directory / f"{name}{SPOOL_SUFFIX}"
        os.rename(opening, path)
        _fsync_dir(directory)  # the file's name survives a power loss too
        return cls(path, fd, max_bytes)

    def append(self, rows: list[Row]) -> None:
        """Blocking (run in a thread): the rows on disk, in order, or SpoolFull / OSError."""
        data = b"".join(json.dumps(row, ensure_ascii=False).encode() + b"\n" for row in rows)
        if spool_bytes(self.path.parent) + len(data) > self._max_bytes:
            raise SpoolFull
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(f"short write ({written} of {len(data)} bytes)")
            os.fsync(self._fd)
        except OSError:
            # A half-written line would make the next one unreadable: cut back to the last row.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
            raise
        self._size += len(data)

    def remove(self) -> None:
        """Every row is in the database: the outbox is no longer needed."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        os.close(self._fd)

    def release(self) -> None:
        """Leave the file for the sweeper (rows still unsent)."""
        os.close(self._fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_bytes(directory: Path) -> int:
    total = 0
    with os.scandir(directory) as entries:
        for entry in entries:
            with contextlib.suppress(FileNotFoundError):
                total += entry.stat().st_size
    return total


def read_spool(path: Path | int) -> list[Row]:
    """The complete rows of an outbox file, in order. A last line cut short by a kill is
    skipped: that row was never on disk as a whole."""
    if isinstance(path, int):
        with os.fdopen(os.dup(path), "rb") as f:
            f.seek(0)
            data = f.read()
    else:
        data = path.read_bytes()
    rows: list[Row] = []
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            logger.warning("outbox %s: an unreadable line skipped", getattr(path, "name", path))
    return rows


# --- rows and how they reach PostgreSQL ---------------------------------------------------------

_INSERT_SESSION = (
    "INSERT INTO voice_sessions (id, gym_id, member_id, kiosk_id, room, started_at)"
    " VALUES ($1, $2, $3, $4, $5, to_timestamp($6)) ON CONFLICT (id) DO NOTHING"
)
_INSERT_INTERACTION = (
    "INSERT INTO jarvis_interactions (log_id, session_id, gym_id, kind, text, tool_name, tool_args,"
    " tool_result, latency_ms, interrupted, created_at)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8::jsonb, $9, $10, to_timestamp($11))"
    " ON CONFLICT (log_id) DO NOTHING"
)
# The real end wins over an "interrompue" the sweeper wrote while this session's rows waited
# in an outbox (its heartbeat could not reach a database that was down).
_END_SESSION = (
    "UPDATE voice_sessions SET ended_at = to_timestamp($2), duration_s = $3, outcome = $4,"
    " summary = $5, sentiment = $6"
    " WHERE id = $1 AND gym_id = $7 AND (ended_at IS NULL OR outcome = 'interrompue')"
)
# Ended where its job was last heard of: its last row, or its last heartbeat.
END_INTERRUPTED = (
    "UPDATE voice_sessions SET outcome = 'interrompue', summary = $3,"
    " ended_at = greatest(started_at, heartbeat_at, to_timestamp($2)),"
    " duration_s = extract(epoch FROM greatest(started_at, heartbeat_at, to_timestamp($2)) - started_at)"
    " WHERE id = $1 AND ended_at IS NULL"
)
_HEARTBEAT = "UPDATE voice_sessions SET heartbeat_at = now() WHERE id = $1 AND ended_at IS NULL"


def _statement(row: Row) -> tuple[str, tuple[Any, ...]]:
    op = row["op"]
    if op == "session":
        return _INSERT_SESSION, (
            row["session_id"], row["gym_id"], row["member_id"], row["kiosk_id"], row["room"], row["at"],
        )  # fmt: skip
    if op == "interaction":
        return _INSERT_INTERACTION, (
            row["id"], row["session_id"], row["gym_id"], row["kind"], row["text"], row["tool_name"],
            row["tool_args"], row["tool_result"], row["latency_ms"], row["interrupted"], row["at"],
        )  # fmt: skip
    if op == "end":
        return _END_SESSION, (
            row["session_id"], row["at"], row["duration_s"], row["outcome"], row["summary"], row["sentiment"],
            row["gym_id"],
        )  # fmt: skip
    raise ValueError(f"unknown outbox row {op!r}")


# Errors that are the row's own (a constraint, bad data, a malformed outbox line): retrying
# would only block the rows after it, so it is skipped with an error log. Any other failure
# (connection refused, shutdown, failover, a migration not yet applied) means the database is
# not ready for it now: the row waits in the outbox and is tried again, never dropped.
ROW_ERRORS: tuple[type[Exception], ...] = (
    asyncpg.IntegrityConstraintViolationError,  # class 23
    asyncpg.DataError,  # class 22
    ValueError,  # includes asyncpg's client-side DataError
    KeyError,
    TypeError,
)


async def write_row(pool: Any, row: Row, db_timeout_s: float) -> None:
    """One outbox row into PostgreSQL (idempotent); raises on any failure."""
    sql, args = _statement(row)
    async with pool.acquire(timeout=db_timeout_s) as conn:
        await conn.execute(sql, *args)


async def write_until_done(pool: Any, row: Row, db_timeout_s: float, what: str) -> bool:
    """Write one row, waiting out any outage; False when the database refused the row itself."""
    delay = RETRY_FIRST_S
    failing_since: float | None = None
    while True:
        try:
            await write_row(pool, row, db_timeout_s)
        except ROW_ERRORS as exc:
            logger.error("%s: a log row refused by the database (%s); skipped", what, type(exc).__name__)
            return False
        except Exception as exc:
            if failing_since is None:
                failing_since = time.monotonic()
                logger.warning("%s: database unavailable (%s); rows wait in the outbox", what, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(RETRY_MAX_S, delay * 2)
            continue
        if failing_since is not None:
            logger.info("%s: database back after %.1f s; sending the outbox", what, time.monotonic() - failing_since)
        return True


class SessionLog:
    """Writes one session's rows in order, off the conversation's path, through its outbox."""

    def __init__(
        self,
        pool: Any,
        context: MemberContext,
        db_timeout_s: float = DB_TIMEOUT_S,
        settings: SessionLogSettings | None = None,
    ) -> None:
        self._pool = pool
        self._db_timeout_s = db_timeout_s
        self._context = context
        self._settings = settings or AgentSettings().session_log
        self._queue: asyncio.Queue[Row | None] = asyncio.Queue()  # said, not yet on disk
        self._spooled: collections.deque[Row] = collections.deque()  # on disk, not yet in the database
        self._spooled_more = asyncio.Event()
        self._spool: Spool | None = None
        self._spool_path: Path | None = None
        self._spooler: asyncio.Task[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._heartbeat: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._finished = False
        self.record = SessionRecord()
        self.lost_rows = 0  # dropped: the outbox was full, or the database refused the row itself
        self.written_rows = 0

    @property
    def session_id(self) -> str:
        return self._context.session_id

    @property
    def pending_rows(self) -> int:
        """Rows said but not yet in the database (in memory or in the outbox)."""
        return self._queue.qsize() + len(self._spooled)

    @property
    def spool_path(self) -> Path | None:
        """The session's outbox file (gone once every row reached the database)."""
        return self._spool_path

    def session_row(self) -> Row:
        """The session's voice_sessions row, as the outbox writes it."""
        ctx = self._context
        return {"op": "session", "session_id": ctx.session_id, "gym_id": ctx.gym.id, "member_id": ctx.member.id,
                "kiosk_id": ctx.kiosk_id, "room": ctx.room, "at": self._started_at}  # fmt: skip

    async def ensure_session_row(self, conn: Any) -> None:
        """Writes the voice_sessions row on ``conn`` now, unless it is there (the outbox's own row,
        same values): a tool's booking made before the outbox drained still points at its session."""
        sql, args = _statement(self.session_row())
        await conn.execute(sql, *args)

    def start(self) -> None:
        """Queue the voice_sessions row and start the writers. Returns at once."""
        ctx = self._context
        self._enqueue(self.session_row())
        name = f"session-log-{ctx.session_id}"
        self._spooler = asyncio.create_task(self._spool_rows(), name=f"{name}-spool")
        self._sender = asyncio.create_task(self._send_rows(), name=f"{name}-send")
        self._heartbeat = asyncio.create_task(self._beat(), name=f"{name}-heartbeat")

    def attach(self, session: AgentSession[Any]) -> None:
        session.on("conversation_item_added", self._on_item)
        session.on("function_tools_executed", self._on_tools)
        session.on("close", self._on_close)

    # --- what the conversation reports ---------------------------------------------------

    def user_turn(self, text: str) -> None:
        self.record.user_turns.append(text)
        self._add(_Interaction("user", text=text))

    def agent_turn(self, text: str, interrupted: bool = False) -> None:
        self.record.agent_turns.append(text)
        self._add(_Interaction("agent", text=text, interrupted=interrupted))

    def tool_call(self, call: FunctionCall, output: FunctionCallOutput | None) -> None:
        try:
            args: Any = json.loads(call.arguments) if call.arguments else {}
        except ValueError:
            args = {"unparsed": call.arguments[:500]}
        succeeded = output is not None and not output.is_error
        result = None if output is None else {"output": output.output, "is_error": output.is_error}
        latency = None if output is None else max(0.0, (output.created_at - call.created_at) * 1000)
        self.record.tools.append((call.name, succeeded))
        self._add(_Interaction("tool", tool_name=call.name, tool_args=args, tool_result=result, latency_ms=latency))

    def _on_item(self, event: ConversationItemAddedEvent) -> None:
        item = event.item
        if not isinstance(item, ChatMessage):
            return
        if item.role == "assistant" and item.interrupted:
            # Kept even when the member cut in before the first word: the barge-in itself is the fact.
            self.agent_turn(item.text_content or "", interrupted=True)
        elif not item.text_content:
            return
        elif item.role == "user":
            self.user_turn(item.text_content)
        elif item.role == "assistant":
            self.agent_turn(item.text_content)

    def _on_tools(self, event: FunctionToolsExecutedEvent) -> None:
        for call, output in event.zipped():
            self.tool_call(call, output)

    def _on_close(self, event: CloseEvent) -> None:
        if event.error is not None:
            self.record.error = type(event.error).__name__
        # The summary is written after the conversation, never on its path.
        asyncio.get_running_loop().create_task(self.finish())

    # --- writing ---------------------------------------------------------------------------

    def _add(self, row: _Interaction) -> None:
        self._enqueue(
            {
                "op": "interaction",
                "id": str(uuid.uuid4()),  # the row's key: a replay never inserts it twice
                "session_id": self._context.session_id,
                "gym_id": self._context.gym.id,
                "kind": row.kind,
                "text": row.text,
                "tool_name": row.tool_name,
                "tool_args": None if row.tool_args is None else json.dumps(row.tool_args, ensure_ascii=False),
                "tool_result": None if row.tool_result is None else json.dumps(row.tool_result, ensure_ascii=False),
                "latency_ms": row.latency_ms,
                "interrupted": row.interrupted,
                "at": time.time(),
            }
        )

    def _enqueue(self, row: Row) -> None:
        if self._finished:
            return
        self._queue.put_nowait(row)

    async def _spool_rows(self) -> None:
        """Rows to disk in order, as many at a time as are waiting (one fsync for them all)."""
        settings = self._settings
        try:
            self._spool = await asyncio.to_thread(
                Spool.create, settings.spool_dir, self.session_id, int(settings.spool_max_mb * 1024 * 1024)
            )
            self._spool_path = self._spool.path
        except OSError as exc:
            # Still sent to the database, but a crash would lose them: said loudly, once.
            logger.error("session %s: no outbox in %s (%s); rows go to the database unspooled",
                         self.session_id, settings.spool_dir, type(exc).__name__)  # fmt: skip
        done = False
        while not done:
            batch = [await self._queue.get()]
            while not self._queue.empty():
                batch.append(self._queue.get_nowait())
            done = None in batch
            rows = [row for row in batch if row is not None]
            if rows and self._spool is not None:
                try:
                    await asyncio.to_thread(self._spool.append, rows)
                except SpoolFull:
                    self.lost_rows += len(rows)
                    logger.error("session %s: outbox full (%.0f MB); %d log row(s) dropped",
                                 self.session_id, settings.spool_max_mb, len(rows))  # fmt: skip
                    continue
                except OSError as exc:
                    logger.error("session %s: outbox write failed (%s); rows go to the database unspooled",
                                 self.session_id, type(exc).__name__)  # fmt: skip
            self._spooled.extend(rows)
            self._spooled_more.set()

    async def _send_rows(self) -> None:
        """Spooled rows to PostgreSQL, in order, each until it is in (or refused for itself)."""
        what = f"session {self.session_id}"
        while True:
            if not self._spooled:
                if self._spooler is not None and self._spooler.done():
                    return
                self._spooled_more.clear()
                await self._spooled_more.wait()
                continue
            if await write_until_done(self._pool, self._spooled[0], self._db_timeout_s, what):
                self.written_rows += 1
            else:
                self.lost_rows += 1
            self._spooled.popleft()

    async def _beat(self) -> None:
        """A live session says so; the sweeper ends the sessions that stopped saying it."""
        while True:
            await asyncio.sleep(self._settings.heartbeat_s)
            try:
                async with self._pool.acquire(timeout=self._db_timeout_s) as conn:
                    await conn.execute(_HEARTBEAT, self.session_id)
            except Exception as exc:  # the rows wait in the outbox; the next beat will do
                logger.debug("session %s: heartbeat not written (%s)", self.session_id, type(exc).__name__)

    async def finish(self, outcome: str | None = None) -> None:
        """Queue duration, outcome, summary and sentiment, then wait (a while) for the outbox to
        reach the database. Idempotent."""
        if self._finished:
            return
        ended_at = time.time()
        summary, sentiment = summarize(self.record)
        if outcome is None:
            outcome = "error" if self.record.error else ("completed" if self.record.user_turns else "no_interaction")
        self._enqueue(
            {"op": "end", "session_id": self.session_id, "gym_id": self._context.gym.id, "at": ended_at,
             "duration_s": ended_at - self._started_at, "outcome": outcome, "summary": summary,
             "sentiment": sentiment}
        )  # fmt: skip
        self._finished = True
        self._queue.put_nowait(None)
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        if self._spooler is None or self._sender is None:
            return
        await asyncio.wait({self._spooler, self._sender}, timeout=self._settings.drain_timeout_s)
        if not self._sender.done():
            logger.warning("session %s: %d log row(s) left in the outbox for the sweeper",
                           self.session_id, self.pending_rows)  # fmt: skip
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        # A spooler still writing (a stuck disk) keeps the file locked until the process exits.
        if self._spool is not None and self._spooler.done():
            spool, self._spool = self._spool, None
            await asyncio.to_thread(spool.remove if self.pending_rows == 0 else spool.release)
