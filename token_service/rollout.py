"""Rollout: which kiosks get JARVIS, and which keep the chain's current provider (issue 13).

The flags live in PostgreSQL (migration 005: ``jarvis_rollout_global``, ``jarvis_rollout``), the
source of truth, changed by SQL or by the admin routes below. Each token-service instance reads
both tables whole into a snapshot, and a task of its own reads them again every ``refresh_s``
(0.5 s by default): a change reaches every instance within ``refresh_s`` plus one query, without a
restart and without any instance having to be told. The tables are tiny (a row per gym or pilot kiosk).

Decision, first match wins: the global kill switch (everyone off); the kiosk's own row; its gym's
row; the global default mode. ``percent N`` admits the members whose bucket (a hash of gym and
member id, 0-9999) is below N × 100: the same member always gets the same answer, and raising N
only adds members.

A kiosk told ``jarvis_disabled`` uses the old provider for that member's visit.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import uuid
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Request
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from jarvis.background import OutageLog, Periodic
from token_service.errors import ApiError

logger = logging.getLogger("token_service.rollout")

Mode = Literal["off", "percent", "on"]
ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"


@dataclass(frozen=True)
class Flag:
    mode: Mode
    percent: int = 0


@dataclass(frozen=True)
class Snapshot:
    kill_switch: bool = False
    default: Flag = Flag("on")
    # (gym_id, kiosk_id): kiosk_id "" is the gym's own row.
    flags: dict[tuple[str, str], Flag] = field(default_factory=dict)


def member_bucket(gym_id: str, member_id: str) -> int:
    """0-9999, fixed per (gym, member): where the member stands in a percent rollout."""
    digest = hashlib.sha256(f"{gym_id}:{member_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 10_000


def flag_for(snapshot: Snapshot, gym_id: str, kiosk_id: str) -> Flag | None:
    """The flag that applies to a kiosk (None: the kill switch is on)."""
    if snapshot.kill_switch:
        return None
    return snapshot.flags.get((gym_id, kiosk_id)) or snapshot.flags.get((gym_id, "")) or snapshot.default


def jarvis_enabled(snapshot: Snapshot, gym_id: str, kiosk_id: str, member_id: str | None) -> bool | None:
    """True or False; None when it depends on the member and ``member_id`` is not known yet."""
    flag = flag_for(snapshot, gym_id, kiosk_id)
    if flag is None or flag.mode == "off":
        return False
    if flag.mode == "on" or flag.percent >= 100:
        return True
    if flag.percent <= 0:
        return False
    if member_id is None:
        return None
    return member_bucket(gym_id, member_id) < flag.percent * 100


def disabled_error() -> ApiError:
    return ApiError(
        403, "jarvis_disabled", "JARVIS is not enabled for this kiosk or member: use the current provider"
    )


class Rollout:
    """The snapshot of the flags, read again from PostgreSQL every ``refresh_s`` by a task of its own.

    Requests read the snapshot in memory and never wait for the database: on a loaded host one
    refusal waited 330 ms for a flags query that happened to fall due on its path (bench.overload,
    2026-12-05). Only the first request, and the first after an admin route changed a flag here,
    read it themselves. When the database does not answer, the last snapshot stays in use (logged
    once per outage), so a database hiccup does not flip any kiosk."""

    def __init__(self, pool: Any, refresh_s: float = 0.5, timeout_s: float = 1.0) -> None:
        self.get_pool = pool  # an async callable returning the asyncpg pool (made lazily by the app)
        self.refresh_s = refresh_s
        self.timeout_s = timeout_s
        self._snapshot: Snapshot | None = None
        self._changed_here = False
        self._lock = asyncio.Lock()
        self._refresher = Periodic("rollout-refresh", refresh_s, self._refresh_in_background)
        self._outage = OutageLog(logger, "rollout flags not read", "keeping the last ones", "rollout flags read again")

    async def snapshot(self) -> Snapshot:
        if self._snapshot is None or self._changed_here:
            async with self._lock:
                if self._snapshot is None or self._changed_here:
                    await self._refresh(fail=self._snapshot is None)
        self._refresher.start()
        assert self._snapshot is not None
        return self._snapshot

    def invalidate(self) -> None:
        """Read the flags again on the next request (an admin route changed them here)."""
        self._changed_here = True

    async def aclose(self) -> None:
        await self._refresher.aclose()

    async def _refresh_in_background(self) -> None:
        async with self._lock:
            await self._refresh(fail=False)

    async def _refresh(self, *, fail: bool) -> None:
        """Reads the flags; on failure raises ``database_unavailable`` when ``fail``, else keeps the last ones."""
        self._changed_here = False
        try:
            self._snapshot = await self._read()
        except Exception as exc:
            if fail:
                raise ApiError(503, "database_unavailable", "database unavailable, retry shortly") from exc
            self._outage.failed(exc)
            return
        self._outage.succeeded()

    async def _read(self) -> Snapshot:
        pool = await self.get_pool()
        async with pool.acquire(timeout=self.timeout_s) as conn:
            head = await conn.fetchrow(
                "SELECT kill_switch, default_mode, default_percent FROM jarvis_rollout_global",
                timeout=self.timeout_s,
            )
            rows = await conn.fetch(
                "SELECT gym_id::text AS gym_id, kiosk_id, mode, percent FROM jarvis_rollout", timeout=self.timeout_s
            )
        flags = {(r["gym_id"], r["kiosk_id"]): Flag(r["mode"], r["percent"]) for r in rows}
        if head is None:  # the row was deleted by hand: the defaults of the migration
            return Snapshot(flags=flags)
        return Snapshot(head["kill_switch"], Flag(head["default_mode"], head["default_percent"]), flags)

    async def check(self, gym_id: str, kiosk_id: str, member_id: str | None) -> bool | None:
        """Raise ``jarvis_disabled`` when the kiosk must use the old provider; None: ask again with
        the member's id (percent rollout), True: JARVIS."""
        enabled = jarvis_enabled(await self.snapshot(), gym_id, kiosk_id, member_id)
        if enabled is False:
            raise disabled_error()
        return enabled


# -- admin routes ---------------------------------------------------------------------------------
class FlagBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Mode
    percent: int = Field(default=0, ge=0, le=100, description="share of the gym's members when mode is 'percent'")

    @model_validator(mode="after")
    def percent_only_with_percent(self) -> FlagBody:
        if self.mode != "percent" and self.percent:
            raise ValueError("percent is only for mode 'percent'")
        return self


class KillSwitchBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    on: bool = Field(description="true: every kiosk of every gym uses the old provider")


class RolloutView(BaseModel):
    kill_switch: bool
    default: FlagBody
    gyms: dict[str, FlagBody]
    kiosks: dict[str, dict[str, FlagBody]]


def rollout(request: Request) -> Rollout:
    return request.app.state.rollout  # type: ignore[no-any-return]


async def admin(request: Request) -> None:
    """``Authorization: Bearer <JARVIS_ADMIN_API_KEY>``; without that setting the routes are off."""
    expected = request.app.state.admin_api_key
    if not expected:
        raise ApiError(404, "admin_disabled", "admin routes are off: JARVIS_ADMIN_API_KEY is not set")
    scheme, _, key = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), expected.encode()):
        raise ApiError(401, "invalid_admin_key", "missing or wrong admin key", {"WWW-Authenticate": "Bearer"})


def view(snapshot: Snapshot) -> RolloutView:
    gyms: dict[str, FlagBody] = {}
    kiosks: dict[str, dict[str, FlagBody]] = {}
    for (gym_id, kiosk_id), flag in sorted(snapshot.flags.items()):
        body = FlagBody(mode=flag.mode, percent=flag.percent if flag.mode == "percent" else 0)
        if kiosk_id:
            kiosks.setdefault(gym_id, {})[kiosk_id] = body
        else:
            gyms[gym_id] = body
    default = snapshot.default
    return RolloutView(
        kill_switch=snapshot.kill_switch,
        default=FlagBody(mode=default.mode, percent=default.percent if default.mode == "percent" else 0),
        gyms=gyms, kiosks=kiosks,
    )


# Declares the scheme in OpenAPI; admin() reads the header and answers with our codes.
admin_bearer = HTTPBearer(scheme_name="AdminKey", description="JARVIS_ADMIN_API_KEY", auto_error=False)
router = APIRouter(prefix="/v1/admin/rollout", tags=["admin"], dependencies=[Depends(admin_bearer), Depends(admin)])
Flags = Annotated[Rollout, Depends(rollout)]
KioskId = Annotated[str, Path(pattern=ID_PATTERN)]


async def _write(flags: Rollout, what: str, sql: str, *args: object, must_match: bool = True) -> RolloutView:
    pool = await flags.get_pool()
    async with pool.acquire(timeout=flags.timeout_s) as conn:
        status = await conn.execute(sql, *args, timeout=flags.timeout_s)
    if must_match and status.endswith(" 0"):
        raise ApiError(404, "unknown_gym", "no such gym")
    logger.info("rollout changed by the admin route: %s", what)
    flags.invalidate()  # this instance at once; the others within their refresh
    return view(await flags.snapshot())


@router.get("", response_model=RolloutView)
async def get_rollout(flags: Flags) -> RolloutView:
    """Every flag, as read from the database now."""
    flags.invalidate()
    return view(await flags.snapshot())


@router.put("/kill-switch", response_model=RolloutView)
async def put_kill_switch(body: KillSwitchBody, flags: Flags) -> RolloutView:
    """The instant way back: every kiosk uses the old provider within 1 s (sessions already live go on)."""
    return await _write(
        flags, f"kill switch {'on' if body.on else 'off'}",
        "UPDATE jarvis_rollout_global SET kill_switch = $1, updated_at = now()", body.on,
    )


@router.put("/default", response_model=RolloutView)
async def put_default(body: FlagBody, flags: Flags) -> RolloutView:
    """The mode of every gym without a row of its own."""
    return await _write(
        flags, f"default {body.mode} {body.percent}",
        "UPDATE jarvis_rollout_global SET default_mode = $1, default_percent = $2, updated_at = now()",
        body.mode, body.percent,
    )


UPSERT = (
    "INSERT INTO jarvis_rollout (gym_id, kiosk_id, mode, percent) SELECT id, $2, $3, $4 FROM gyms WHERE id = $1::uuid"
    " ON CONFLICT (gym_id, kiosk_id) DO UPDATE SET mode = excluded.mode, percent = excluded.percent,"
    " updated_at = now()"
)


@router.put("/gyms/{gym_id}", response_model=RolloutView)
async def put_gym(gym_id: uuid.UUID, body: FlagBody, flags: Flags) -> RolloutView:
    """A gym's mode (its kiosks without a row of their own follow it)."""
    return await _write(
        flags, f"gym {gym_id} {body.mode} {body.percent}", UPSERT, str(gym_id), "", body.mode, body.percent
    )


@router.delete("/gyms/{gym_id}", response_model=RolloutView)
async def delete_gym(gym_id: uuid.UUID, flags: Flags) -> RolloutView:
    """The gym follows the default mode again."""
    return await _write(
        flags, f"gym {gym_id} back to the default",
        "DELETE FROM jarvis_rollout WHERE gym_id = $1::uuid AND kiosk_id = ''", str(gym_id), must_match=False,
    )


@router.put("/gyms/{gym_id}/kiosks/{kiosk_id}", response_model=RolloutView)
async def put_kiosk(gym_id: uuid.UUID, kiosk_id: KioskId, body: FlagBody, flags: Flags) -> RolloutView:
    """One kiosk's mode, over its gym's (a pilot kiosk)."""
    return await _write(
        flags, f"gym {gym_id} kiosk {kiosk_id} {body.mode} {body.percent}",
        UPSERT, str(gym_id), kiosk_id, body.mode, body.percent,
    )


@router.delete("/gyms/{gym_id}/kiosks/{kiosk_id}", response_model=RolloutView)
async def delete_kiosk(gym_id: uuid.UUID, kiosk_id: KioskId, flags: Flags) -> RolloutView:
    """The kiosk follows its gym again."""
    return await _write(
        flags, f"gym {gym_id} kiosk {kiosk_id} back to its gym",
        "DELETE FROM jarvis_rollout WHERE gym_id = $1::uuid AND kiosk_id = $2", str(gym_id), kiosk_id,
        must_match=False,
    )
