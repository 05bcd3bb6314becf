"""Loading a member's context from PostgreSQL (one round trip) and keeping it in Redis.

A cached context is used only while the member's row is unchanged: each use first reads the
row's stamp (id, active flag and a hash of the whole row) by gym and badge, one indexed lookup.
A badge given to someone else, a member moved or deactivated, a changed name or goal: the next
request sees it. (Past sessions and visits may lag by the cache's TTL.)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from jarvis.context import (
    CoachInfo,
    GymInfo,
    MemberContext,
    MemberInfo,
    PastSession,
    Weather,
    session_context_key,
)
from jarvis.settings import DB_TIMEOUT_S

# Member, gym, preferred coach, visit figures and the last five finished sessions, in one
# statement, so a cold cache costs one database round trip.
_CONTEXT_SELECT = """
SELECT m.id::text AS member_id, m.gym_id::text AS gym_id, m.is_active, md5(m::text) AS version,
       m.first_name, m.birth_date, m.goal, m.experience_level, m.member_since,
       (SELECT max(v.visited_at) FROM member_visits v WHERE v.member_id = m.id) AS last_visit,
       (SELECT count(*) FROM member_visits v
         WHERE v.member_id = m.id AND v.visited_at > now() - interval '30 days') AS visits_30,
       jsonb_build_object('id', g.id, 'slug', g.slug, 'name', g.name, 'city', g.city,
                          'address', g.address, 'timezone', g.timezone,
                          'opening_hours', g.opening_hours, 'equipment', to_jsonb(g.equipment),
                          'classes', g.classes, 'prices', g.prices,
                          'agent_settings', g.agent_settings)::text AS gym,
       (SELECT jsonb_build_object('id', s.id, 'first_name', s.first_name, 'speciality', s.speciality)
          FROM gym_staff s WHERE s.id = m.preferred_coach_id AND s.is_active)::text AS coach,
       (SELECT coalesce(jsonb_agg(h ORDER BY h.started_at DESC), '[]'::jsonb) FROM (
          SELECT vs.started_at, vs.summary, vs.sentiment FROM voice_sessions vs
           WHERE vs.member_id = m.id AND vs.ended_at IS NOT NULL
           ORDER BY vs.started_at DESC LIMIT 5) h)::text AS history
  FROM gym_members m JOIN gyms g ON g.id = m.gym_id
"""
# By gym and badge: another gym's badge is not found, exactly like a badge that does not exist.
CONTEXT_BY_BADGE = _CONTEXT_SELECT + " WHERE m.badge_id = $1 AND m.gym_id = $2::uuid"
CONTEXT_BY_MEMBER = _CONTEXT_SELECT + " WHERE m.id = $1::uuid AND m.gym_id = $2::uuid"
# What a cached context is checked against: the same version as _CONTEXT_SELECT's.
MEMBER_STAMP = (
    "SELECT m.id::text AS member_id, m.is_active, md5(m::text) AS version FROM gym_members m"
    " WHERE m.badge_id = $1 AND m.gym_id = $2::uuid"
)

# Longer than any session token lives (token_ttl_s is minutes): a claim outlives every rejoin.
SESSION_CLAIM_TTL_S = 24 * 3600

logger = logging.getLogger("jarvis.context_store")


@dataclass
class MemberRecord:
    """A member's context parts, before a session id is attached."""

    member_id: str
    gym_id: str
    is_active: bool
    version: str  # md5 of the member's row when it was read
    gym: GymInfo
    member: MemberInfo
    coach: CoachInfo | None
    history: list[PastSession]

    @classmethod
    def from_row(cls, row: Any) -> MemberRecord:
        return cls(
            member_id=row["member_id"],
            gym_id=row["gym_id"],
            is_active=row["is_active"],
            version=row["version"],
            gym=GymInfo.model_validate_json(row["gym"]),
            member=MemberInfo(
                id=row["member_id"],
                first_name=row["first_name"],
                birth_date=row["birth_date"],
                goal=row["goal"],
                experience_level=row["experience_level"],
                member_since=row["member_since"],
                last_visit=row["last_visit"],
                visits_last_30_days=row["visits_30"],
            ),
            coach=CoachInfo.model_validate_json(row["coach"]) if row["coach"] else None,
            history=[PastSession.model_validate(h) for h in json.loads(row["history"])],
        )

    @classmethod
    def from_cache(cls, raw: str | bytes) -> MemberRecord | None:
        """The cached record; None when it is unreadable or from before versions were stored."""
        try:
            data = json.loads(raw)
            version = data["version"]
        except (ValueError, KeyError, TypeError):
            return None
        return cls(
            member_id=data["member_id"],
            gym_id=data["gym_id"],
            is_active=True,  # only active members are cached
            version=version,
            gym=GymInfo.model_validate(data["gym"]),
            member=MemberInfo.model_validate(data["member"]),
            coach=CoachInfo.model_validate(data["coach"]) if data["coach"] else None,
            history=[PastSession.model_validate(h) for h in data["history"]],
        )

    def to_cache(self) -> str:
        return json.dumps(
            {
                "member_id": self.member_id,
                "gym_id": self.gym_id,
                "version": self.version,
                "gym": self.gym.model_dump(mode="json"),
                "member": self.member.model_dump(mode="json"),
                "coach": self.coach.model_dump(mode="json") if self.coach else None,
                "history": [h.model_dump(mode="json") for h in self.history],
            }
        )

    def context(self, *, session_id: str, kiosk_id: str, room: str, weather: Weather | None = None) -> MemberContext:
        return MemberContext(
            session_id=session_id,
            kiosk_id=kiosk_id,
            room=room,
            gym=self.gym,
            member=self.member,
            coach=self.coach,
            history=self.history,
            weather=weather,
            created_at=datetime.now(UTC),
        )


def member_cache_key(gym_id: str, badge_id: str) -> str:
    # The gym is part of the key: a badge can only ever hit its own gym's entry.
    return f"ctx:{gym_id}:{badge_id}"


async def fetch_member_by_badge(conn: Any, gym_id: str, badge_id: str) -> MemberRecord | None:
    """The member of this gym with this badge (None: unknown here, whether or not another gym has it)."""
    row = await conn.fetchrow(CONTEXT_BY_BADGE, badge_id, gym_id)
    return MemberRecord.from_row(row) if row else None


async def member_stamp(conn: Any, gym_id: str, badge_id: str) -> tuple[str, bool, str] | None:
    """(member_id, is_active, version) of this gym's member with this badge, or None."""
    row = await conn.fetchrow(MEMBER_STAMP, badge_id, gym_id)
    return (row["member_id"], row["is_active"], row["version"]) if row else None


async def fetch_member_by_id(conn: Any, gym_id: str, member_id: str) -> MemberRecord | None:
    row = await conn.fetchrow(CONTEXT_BY_MEMBER, member_id, gym_id)
    return MemberRecord.from_row(row) if row else None


async def read_session_context(redis: Any, session_id: str) -> MemberContext | None:
    """The snapshot the token service stored for this session, or None (expired, lost, bad)."""
    raw = await redis.get(session_context_key(session_id))
    if raw is None:
        return None
    try:
        return MemberContext.model_validate_json(raw)
    except ValidationError:
        return None


def session_claim_key(session_id: str) -> str:
    return f"session:{session_id}:claim"


SESSION_ENDED = "ended"


async def claim_session(
    redis: Any, db_pool: Any, session_id: str, job_id: str, db_timeout_s: float = DB_TIMEOUT_S
) -> bool:
    """True unless the session has already ended: its token is then spent.

    A kiosk rejoining with a used token after the room closed makes LiveKit dispatch a new job
    for the same session id, whose summary would overwrite the first one's: that job is refused.
    A job dispatched again while the session is still open (LiveKit re-dispatches when an
    assignment times out on a busy worker) takes the session over: refusing it would leave the
    member with no JARVIS at all. Redis holds the live claim; with Redis down, or once Redis
    forgot, PostgreSQL's record decides: a session whose row has ``ended_at`` is spent. With both
    silent the job goes ahead: a member at the kiosk matters more than a rare duplicate summary.
    """
    key = session_claim_key(session_id)
    try:
        holder = await redis.get(key)
        if holder in (SESSION_ENDED, SESSION_ENDED.encode()):
            return False
        await redis.set(key, job_id, ex=SESSION_CLAIM_TTL_S)
        if holder is not None:
            if holder not in (job_id, job_id.encode()):
                logger.warning("session %s: job %s takes over from job %s (dispatched again)",
                               session_id, job_id, holder.decode() if isinstance(holder, bytes) else holder)
            return True  # Redis holds the live claim: the database need not be asked
    except Exception as exc:  # a Redis outage must not cost the member their session
        logger.warning("session %s: redis unavailable for the claim (%s), asking the database",
                       session_id, type(exc).__name__)
    try:
        async with db_pool.acquire(timeout=db_timeout_s) as conn:
            ended = await conn.fetchval(
                "SELECT ended_at IS NOT NULL AND outcome IS DISTINCT FROM 'interrompue'"
                " FROM voice_sessions WHERE id = $1::uuid",
                session_id,
            )
    except Exception as exc:  # with both stores silent, serving the member beats refusing them
        logger.warning("session %s: database unavailable for the claim (%s), the job goes ahead",
                       session_id, type(exc).__name__)
        return True
    return not ended


async def end_session_claim(redis: Any, session_id: str) -> None:
    """Marks the session's token spent, before its room closes: a rejoin then finds no session."""
    try:
        await redis.set(session_claim_key(session_id), SESSION_ENDED, ex=SESSION_CLAIM_TTL_S)
    except Exception as exc:  # PostgreSQL's ended_at still refuses the rejoin once the log is written
        logger.warning("session %s: redis unavailable to end the claim (%s)", session_id, type(exc).__name__)
