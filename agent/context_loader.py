"""The agent's view of a session: its dispatch metadata and the member's context."""

from __future__ import annotations

import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from jarvis.context import MemberContext
from jarvis.context_store import fetch_member_by_id, read_session_context

logger = logging.getLogger("jarvis.agent")


class SessionMetadataError(ValueError):
    """The job's metadata does not name a valid session."""


@dataclass(frozen=True)
class SessionMetadata:
    session_id: str
    gym_id: str
    member_id: str
    kiosk_id: str

    @classmethod
    def parse(cls, raw: str | None) -> SessionMetadata:
        try:
            data = json.loads(raw or "")
            meta = cls(
                session_id=str(uuid.UUID(data["session_id"])),
                gym_id=str(uuid.UUID(data["gym_id"])),
                member_id=str(uuid.UUID(data["member_id"])),
                kiosk_id=str(data["kiosk_id"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionMetadataError(f"job metadata is not a JARVIS session: {type(exc).__name__}") from exc
        return meta


async def load_member_context(meta: SessionMetadata, *, redis: Any, db_pool: Any) -> MemberContext:
    """The snapshot from Redis; when it expired or Redis is gone, rebuilt from PostgreSQL."""
    try:
        context = await read_session_context(redis, meta.session_id)
    except Exception as exc:  # a Redis outage must not cost the member their session
        logger.warning("session %s: redis unavailable (%s), loading context from the database",
                       meta.session_id, type(exc).__name__)
        context = None
    if context is not None:
        return context
    async with db_pool.acquire() as conn:
        record = await fetch_member_by_id(conn, meta.gym_id, meta.member_id)
    if record is None:
        raise SessionMetadataError(f"session {meta.session_id}: member not found in its gym")
    logger.info("session %s: context rebuilt from the database", meta.session_id)
    return record.context(session_id=meta.session_id, kiosk_id=meta.kiosk_id, room=f"jarvis-{meta.session_id}")
