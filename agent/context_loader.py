"""The agent's view of a session: the member's context for the session its dispatch names."""

from __future__ import annotations

import logging
from typing import Any

from jarvis.context import MemberContext
from jarvis.context_store import fetch_member_by_id, read_session_context
from jarvis.session_contract import SessionMetadata, SessionMetadataError

logger = logging.getLogger("jarvis.agent")


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
    return record.context(session_id=meta.session_id, kiosk_id=meta.kiosk_id, room=meta.room)
