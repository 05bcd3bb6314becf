"""The member's context snapshot: what the token service loads and the agent reads.

It is stored in Redis as JSON under ``session:{session_id}:context`` and is the only
thing the agent needs to personalise a conversation. Fields the gym has not filled in
are ``None`` or empty: every consumer must cope with a sparse context.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field


class GymInfo(BaseModel):
    id: str
    slug: str
    name: str
    city: str
    address: str
    timezone: str = "Europe/Paris"
    opening_hours: dict[str, list[list[str]]] = Field(default_factory=dict)
    equipment: list[str] = Field(default_factory=list)
    classes: list[dict[str, Any]] = Field(default_factory=list)
    prices: list[dict[str, Any]] = Field(default_factory=list)
    agent_settings: dict[str, Any] = Field(default_factory=dict)


class MemberInfo(BaseModel):
    id: str
    first_name: str
    birth_date: date | None = None
    goal: str | None = None
    experience_level: str | None = None
    member_since: date | None = None
    last_visit: datetime | None = None
    visits_last_30_days: int = 0


class CoachInfo(BaseModel):
    id: str
    first_name: str
    speciality: str | None = None


class PastSession(BaseModel):
    started_at: datetime
    summary: str | None = None
    sentiment: str | None = None


class Weather(BaseModel):
    description: str
    temperature_c: float


class MemberContext(BaseModel):
    session_id: str
    kiosk_id: str
    room: str
    gym: GymInfo
    member: MemberInfo
    coach: CoachInfo | None = None
    history: list[PastSession] = Field(default_factory=list)
    weather: Weather | None = None
    created_at: datetime


def session_context_key(session_id: str) -> str:
    return f"session:{session_id}:context"
