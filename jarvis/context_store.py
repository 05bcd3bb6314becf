"""Loading a member's context from PostgreSQL (one round trip) and keeping it in Redis."""

from __future__ import annotations

import json
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

# Member, gym, preferred coach, visit figures and the last five finished sessions, in one
# statement, so a cold cache costs one database round trip.
_CONTEXT_SELECT = """
SELECT m.id::text AS member_id, m.gym_id::text AS gym_id, m.is_active,
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
CONTEXT_BY_BADGE = _CONTEXT_SELECT + " WHERE m.badge_id = $1"
CONTEXT_BY_MEMBER = _CONTEXT_SELECT + " WHERE m.id = $1::uuid AND m.gym_id = $2::uuid"


@dataclass
class MemberRecord:
    """A member's context parts, before a session id is attached."""

    member_id: str
    gym_id: str
    is_active: bool
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
    def from_cache(cls, raw: str | bytes) -> MemberRecord:
        data = json.loads(raw)
        return cls(
            member_id=data["member_id"],
            gym_id=data["gym_id"],
            is_active=True,  # only active members are cached
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


async def fetch_member_by_badge(conn: Any, badge_id: str) -> MemberRecord | None:
    row = await conn.fetchrow(CONTEXT_BY_BADGE, badge_id)
    return MemberRecord.from_row(row) if row else None


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
