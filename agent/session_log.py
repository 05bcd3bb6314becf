"""The session's record for the gym manager: voice_sessions + jarvis_interactions.

Rows are written as the conversation happens, by one background writer fed through a
queue, so a slow or dead database never delays an answer and a crash loses at most the
row being written. The summary and sentiment are computed after the session ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Literal

from livekit.agents import AgentSession
from livekit.agents.llm import ChatMessage, FunctionCall, FunctionCallOutput
from livekit.agents.voice.events import CloseEvent, ConversationItemAddedEvent, FunctionToolsExecutedEvent

from jarvis.context import MemberContext
from jarvis.settings import DB_TIMEOUT_S

logger = logging.getLogger("jarvis.agent.session_log")

Sentiment = Literal["positive", "neutral", "negative"]

WRITE_ATTEMPTS = 3
DRAIN_TIMEOUT_S = 10.0

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


class SessionLog:
    """Writes one session's rows in order, off the conversation's path."""

    def __init__(self, pool: Any, context: MemberContext, db_timeout_s: float = DB_TIMEOUT_S) -> None:
        self._pool = pool
        self._db_timeout_s = db_timeout_s
        self._context = context
        self._queue: asyncio.Queue[tuple[str, tuple[Any, ...]] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._started_at = time.time()
        self._finished = False
        self.record = SessionRecord()
        self.lost_rows = 0

    @property
    def session_id(self) -> str:
        return self._context.session_id

    def start(self) -> None:
        """Queue the voice_sessions row and start the writer. Returns at once."""
        ctx = self._context
        self._enqueue(
            "INSERT INTO voice_sessions (id, gym_id, member_id, kiosk_id, room, started_at)"
            " VALUES ($1, $2, $3, $4, $5, to_timestamp($6)) ON CONFLICT (id) DO NOTHING",
            (ctx.session_id, ctx.gym.id, ctx.member.id, ctx.kiosk_id, ctx.room, self._started_at),
        )
        self._writer = asyncio.create_task(self._write_rows(), name=f"session-log-{ctx.session_id}")

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
            "INSERT INTO jarvis_interactions"
            " (session_id, gym_id, kind, text, tool_name, tool_args, tool_result, latency_ms, interrupted)"
            " VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7::jsonb, $8, $9)",
            (
                self._context.session_id,
                self._context.gym.id,
                row.kind,
                row.text,
                row.tool_name,
                None if row.tool_args is None else json.dumps(row.tool_args, ensure_ascii=False),
                None if row.tool_result is None else json.dumps(row.tool_result, ensure_ascii=False),
                row.latency_ms,
                row.interrupted,
            ),
        )

    def _enqueue(self, sql: str, args: tuple[Any, ...]) -> None:
        if self._finished:
            return
        self._queue.put_nowait((sql, args))

    async def _write_rows(self) -> None:
        while (item := await self._queue.get()) is not None:
            sql, args = item
            for attempt in range(WRITE_ATTEMPTS):
                try:
                    async with self._pool.acquire(timeout=self._db_timeout_s) as conn:
                        await conn.execute(sql, *args)
                    break
                except Exception as exc:  # the log must never take the conversation down
                    if attempt + 1 == WRITE_ATTEMPTS:
                        self.lost_rows += 1
                        logger.warning(
                            "session %s: a log row could not be written (%s)",
                            self.session_id,
                            type(exc).__name__,
                        )
                    else:
                        await asyncio.sleep(0.2 * 2**attempt)

    async def finish(self, outcome: str | None = None) -> None:
        """Flush the rows, then write duration, outcome, summary and sentiment. Idempotent."""
        if self._finished:
            return
        ended_at = time.time()
        summary, sentiment = summarize(self.record)
        if outcome is None:
            outcome = "error" if self.record.error else ("completed" if self.record.user_turns else "no_interaction")
        self._enqueue(
            "UPDATE voice_sessions SET ended_at = to_timestamp($2), duration_s = $3, outcome = $4,"
            " summary = $5, sentiment = $6 WHERE id = $1 AND gym_id = $7",
            (
                self.session_id,
                ended_at,
                ended_at - self._started_at,
                outcome,
                summary,
                sentiment,
                self._context.gym.id,
            ),
        )
        self._finished = True
        self._queue.put_nowait(None)
        if self._writer is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._writer), DRAIN_TIMEOUT_S)
