"""The gym tools: what JARVIS can do in the world, for one member in one gym.

`GymTools` holds the logic, bound to the ids of one session (gym, member, session): the
LLM only ever supplies the arguments of the action (an exercise, a date, a message), never
whose data is touched, and every query is filtered by the session's gym. The same logic is
wrapped for LiveKit (`livekit_tools`) and for MCP (agent/mcp_server.py).

Each tool returns one short French sentence, numbers written as spoken, that the LLM can
say as it is. A failure the member should hear about raises `ToolFailure` with that
sentence; nothing is written when the arguments are invalid or the database is down.

The four write tools run exactly once per call: each write is keyed by the session and the
LLM's tool-call id (and by the tool and its normalised arguments within one turn, the only key
MCP has), and its first result is stored in `tool_effects` in the same transaction as the row
it describes. A repeat gets that first result back and writes nothing.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import json
import logging
import re
import unicodedata
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import Any, Literal, Protocol
from zoneinfo import ZoneInfo

import asyncpg
from livekit import rtc
from livekit.agents import RunContext, ToolError, function_tool
from livekit.agents.llm import RawFunctionTool
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from jarvis.settings import DB_TIMEOUT_S

from .speech_format import (
    DAY_KEYS,
    DAY_NAMES,
    say_clock,
    say_date,
    say_datetime,
    say_number,
    say_opening_hours,
    say_price,
)

logger = logging.getLogger("jarvis.agent.tools")

BOOKING_DURATION_MIN = 60
BOOKING_HORIZON_DAYS = 90
KIOSK_RPC_METHOD = "kiosk.show_video"
# Rows written by a tool point at the session when its voice_sessions row exists: a live session's
# tools write it first (GymTools' ensure_session); over MCP the session is known to exist already.
SESSION_REF = "(SELECT id FROM voice_sessions WHERE id = {} AND gym_id = $1)"


class ToolFailure(Exception):
    """A result the member must hear as it is: refused, not found, unavailable."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class SessionIds:
    """Whose data a session's tools may touch. Comes from the session, never from the LLM."""

    gym_id: str
    member_id: str
    session_id: str


# --- arguments: what the LLM may choose -------------------------------------------------------


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, populate_by_name=True)

    def identity(self) -> dict[str, Any]:
        """The arguments as a repeat of the same request says them: case and spacing do not count."""
        return {
            key: " ".join(unicodedata.normalize("NFKC", value).casefold().split()) if isinstance(value, str) else value
            for key, value in self.model_dump(by_alias=True).items()
        }


class VideoArgs(_Args):
    exercise: str = Field(
        min_length=1,
        max_length=80,
        description="Nom de l'exercice tel que le membre le dit, par exemple « squat », « développé couché ».",
    )


class CoachArgs(_Args):
    message: str = Field(
        min_length=1, max_length=500, description="Ce que le coach doit savoir, en une ou deux phrases."
    )
    urgency: Literal["low", "medium", "high"] = Field(
        default="medium",
        description="Urgence : « high » pour une douleur ou un problème sur place, « medium » par défaut, "
        "« low » si ça peut attendre.",
    )


class BookingArgs(_Args):
    starts_at: str = Field(
        alias="datetime",
        min_length=1,
        max_length=40,
        description="Début de la séance, heure locale de la salle, au format AAAA-MM-JJTHH:MM.",
    )
    coach: str | None = Field(
        default=None,
        max_length=60,
        description="Prénom du coach souhaité ; à omettre pour le coach attitré du membre.",
    )

    def identity(self) -> dict[str, Any]:
        # "2026-12-08T10:00" and "2026-12-08T10:00:00" are the same request.
        identity = super().identity()
        try:
            identity["datetime"] = datetime.fromisoformat(self.starts_at).isoformat()
        except ValueError:
            pass
        return identity


class ChurnArgs(_Args):
    reason: str = Field(
        min_length=1,
        max_length=500,
        description="Ce qui fait craindre un départ : frustration, machine en panne, affluence, prix…",
    )
    severity: Literal["low", "medium", "high", "critical"] = Field(
        description="Gravité : « critical » si le membre parle de résilier."
    )


GymTopic = Literal["horaires", "adresse", "equipements", "cours", "tarifs"]


class GymInfoArgs(_Args):
    topic: GymTopic = Field(description="Le sujet demandé.")


class NoArgs(_Args):
    pass


class MissionArgs(_Args):
    title: str = Field(
        min_length=3, max_length=120, description="Titre court, par exemple « Rameur numéro 3 en panne »."
    )
    description: str = Field(default="", max_length=1000, description="Les détails utiles à l'équipe.")


@dataclass(frozen=True)
class ToolSpec:
    name: str
    description: str
    args: type[_Args]
    # What the member hears when this tool cannot reach the database.
    unavailable: str


TOOL_SPECS: tuple[ToolSpec, ...] = (
    ToolSpec(
        "display_video_tutorial",
        "Affiche sur l'écran de la borne la vidéo tutoriel d'un exercice du catalogue de la salle. "
        "À utiliser dès que le membre demande comment faire un exercice.",
        VideoArgs,
        "Je ne peux pas afficher de vidéo pour le moment, le catalogue ne répond pas.",
    ),
    ToolSpec(
        "contact_coach",
        "Prévient un coach de la salle (le coach attitré du membre s'il en a un) pour qu'il vienne voir "
        "le membre ou le rappelle. À utiliser pour une douleur, une blessure, un programme ou un conseil "
        "avancé.",
        CoachArgs,
        "Je ne peux pas prévenir de coach pour le moment, le système ne répond pas. Tu peux demander à l'accueil.",
    ),
    ToolSpec(
        "book_session",
        "Réserve une séance de coaching d'une heure pour le membre, après avoir vérifié les horaires "
        "de la salle et les disponibilités du coach.",
        BookingArgs,
        "Je ne peux pas réserver pour le moment, le système de réservation ne répond pas. Réessaie un peu "
        "plus tard ou passe par l'accueil.",
    ),
    ToolSpec(
        "log_churn_risk",
        "Signale discrètement au responsable de la salle un risque que le membre arrête "
        "(frustration, démotivation, envie de résilier).",
        ChurnArgs,
        "Je n'ai pas pu transmettre l'information pour le moment.",
    ),
    ToolSpec(
        "get_gym_info",
        "Donne une information sur la salle : horaires, adresse, équipements, cours collectifs ou tarifs.",
        GymInfoArgs,
        "Je n'arrive pas à consulter les informations de la salle pour le moment.",
    ),
    ToolSpec(
        "get_member_stats",
        "Donne les statistiques d'entraînement du membre : visites, fréquence, dernière visite, régularité.",
        NoArgs,
        "Je n'arrive pas à consulter tes statistiques pour le moment.",
    ),
    ToolSpec(
        "create_mission",
        "Crée une tâche pour l'équipe de la salle : machine en panne, problème de propreté, demande du membre.",
        MissionArgs,
        "Je ne peux pas transmettre la demande à l'équipe pour le moment. Tu peux le signaler à l'accueil.",
    ),
)
SPECS_BY_NAME: dict[str, ToolSpec] = {spec.name: spec for spec in TOOL_SPECS}


def tool_json_schema(spec: ToolSpec) -> dict[str, Any]:
    """The JSON schema of a tool's arguments, as the LLM sees it (French descriptions)."""
    schema = spec.args.model_json_schema(by_alias=True)
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        prop.pop("title", None)
    schema["additionalProperties"] = False
    schema.setdefault("properties", {})
    return schema


def validation_message(spec: ToolSpec, error: ValidationError) -> str:
    fields = sorted({str(e["loc"][0]) for e in error.errors() if e.get("loc")})
    named = ", ".join(fields) if fields else "les paramètres"
    return (
        f"Demande incomplète ou invalide pour {spec.name} ({named}) : rien n'a été fait. "
        "Demande poliment au membre de préciser."
    )


# --- the kiosk ------------------------------------------------------------------------------


class Kiosk(Protocol):
    async def show_video(self, url: str, title: str) -> bool:
        """True when the kiosk confirmed it shows the video; False or an exception otherwise."""
        ...


class RoomKiosk:
    """The kiosk as a participant of the LiveKit room, reached by RPC."""

    def __init__(self, room: rtc.Room, identity: str | Callable[[], str | None], timeout_s: float = 5.0) -> None:
        self._room = room
        self._identity = identity
        self._timeout_s = timeout_s

    def _destination(self) -> str | None:
        if callable(self._identity):
            return self._identity()
        return self._identity

    async def show_video(self, url: str, title: str) -> bool:
        destination = self._destination()
        if not destination:
            return False
        answer = await self._room.local_participant.perform_rpc(
            destination_identity=destination,
            method=KIOSK_RPC_METHOD,
            payload=json.dumps({"url": url, "title": title}),
            response_timeout=self._timeout_s,
        )
        try:
            reply = json.loads(answer)
            status, reason = reply.get("status"), reply.get("reason")
        except (ValueError, AttributeError):
            status, reason = None, "unreadable reply"
        if status != "shown":
            logger.warning("kiosk did not show the video (status %s, reason %s)", status, reason)
        return status == "shown"


@dataclass(frozen=True)
class CoachNotification:
    """What a notification hook receives: ids only, no personal data."""

    request_id: str
    gym_id: str
    coach_id: str | None
    urgency: str


CoachNotifier = Callable[[CoachNotification], Awaitable[None]]


async def log_only_notifier(notification: CoachNotification) -> None:
    logger.info(
        "coach request %s for coach %s (urgency %s)",
        notification.request_id,
        notification.coach_id,
        notification.urgency,
    )


# --- matching -------------------------------------------------------------------------------

_ARTICLES = {"le", "la", "les", "l", "un", "une", "des", "du", "de", "d", "the", "a"}


def normalize_name(text: str) -> str:
    """'Le Développé-Couché' → 'developpe couche': accents, case, hyphens, articles and plurals away."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    words = re.sub(r"[^a-z0-9]+", " ", plain).split()
    while len(words) > 1 and words[0] in _ARTICLES:
        words.pop(0)
    return " ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words)


def match_score(query: str, names: list[str]) -> float:
    q = normalize_name(query)
    best = 0.0
    for name in names:
        n = normalize_name(name)
        if not n:
            continue
        if q == n:
            return 1.0
        if re.search(rf"\b{re.escape(n)}\b", q) or re.search(rf"\b{re.escape(q)}\b", n):
            best = max(best, 0.9)
        best = max(best, difflib.SequenceMatcher(None, q, n).ratio())
    return best


# --- exactly once ---------------------------------------------------------------------------

# The tools that change the world; the others only read and may run again freely.
WRITE_TOOLS = frozenset({"book_session", "contact_coach", "log_churn_risk", "create_mission"})


def effect_keys(name: str, args: _Args, call_id: str | None, turn: str | None) -> list[str]:
    """The keys one write is known by, within its session.

    The LLM's tool-call id names the call itself; the tool and its normalised arguments within
    the member's turn catch the same request issued again under a new id (a model looping on
    a tool). MCP requests have neither a call id nor a turn: the whole session is their turn.
    """
    digest = hashlib.sha256(json.dumps(args.identity(), sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    keys = [f"args:{turn or 'session'}:{name}:{digest}"]
    if call_id:
        keys.insert(0, f"call:{name}:{call_id}")
    return keys


@dataclass(frozen=True)
class Effect:
    """What a write did: the sentence the member hears and the row written (or found)."""

    said: str
    effect_id: Any
    # Runs once the effect is committed, and never for a repeat (e.g. the coach's notification).
    after_commit: Callable[[], Awaitable[None]] | None = None


# --- the tools ------------------------------------------------------------------------------


def _slot_fits(ranges: list[list[str]], start: dtime, end: dtime) -> bool:
    return any(len(r) == 2 and dtime.fromisoformat(r[0]) <= start and end <= dtime.fromisoformat(r[1]) for r in ranges)


def _say_ranges(ranges: list[list[str]]) -> str:
    return " et ".join(f"de {say_clock(r[0])} à {say_clock(r[1])}" for r in ranges if len(r) == 2)


def _jsonb(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


class GymTools:
    """The tools of one session. Every query is scoped to `ids.gym_id`."""

    def __init__(
        self,
        pool: Any,
        ids: SessionIds,
        *,
        kiosk: Kiosk | None = None,
        notify_coach: CoachNotifier = log_only_notifier,
        now: Callable[[], datetime] | None = None,
        db_timeout_s: float = DB_TIMEOUT_S,
        ensure_session: Callable[[Any], Awaitable[None]] | None = None,
    ) -> None:
        self._pool = pool
        self._db_timeout_s = db_timeout_s
        self.ids = ids
        # Writes the session's voice_sessions row in the effect's transaction (the session log
        # writes it asynchronously): without it an early booking would lose its session link.
        self._ensure_session = ensure_session
        self.kiosk = kiosk
        self._notify_coach = notify_coach
        self._now = now or (lambda: datetime.now(ZoneInfo("UTC")))
        self._member_checked = False

    async def call(
        self, name: str, arguments: dict[str, Any], *, call_id: str | None = None, turn: str | None = None
    ) -> str:
        """Validate the LLM's arguments, then run the tool. Raises ToolFailure with what to say.

        `call_id` is the LLM's tool-call id and `turn` the member's turn the call answers; a
        write tool called again with the same call id, or with the same arguments in the same
        turn, returns its first result and writes nothing (see `effect_keys`).
        """
        spec = SPECS_BY_NAME.get(name)
        if spec is None:
            raise ToolFailure(f"Outil inconnu : {name}.")
        try:
            args = spec.args.model_validate(arguments)
        except ValidationError as exc:
            raise ToolFailure(validation_message(spec, exc)) from None
        try:
            await self._check_member()
            if name in WRITE_TOOLS:
                return await self._exactly_once(name, args, effect_keys(name, args, call_id, turn))
            handler: Callable[[Any], Awaitable[str]] = getattr(self, name)
            return await handler(args)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            logger.warning("tool %s: database unavailable (%s)", name, type(exc).__name__)
            raise ToolFailure(spec.unavailable) from None

    async def _exactly_once(self, name: str, args: _Args, keys: list[str]) -> str:
        """Run a write tool once per key: the effect and its stored result commit together.

        The keys are claimed first, in the effect's own transaction: a concurrent repeat waits
        on that claim (PostgreSQL's unique index is the lock) and then reads the committed
        result; if the first call failed or was cut off, its claim rolled back with its row
        and the repeat does the work itself.
        """
        write: Callable[[Any, Any], Awaitable[Effect]] = getattr(self, f"_{name}")
        async with self._connection() as conn:
            async with conn.transaction():
                claimed = await conn.fetch(
                    "INSERT INTO tool_effects (session_id, gym_id, effect_key, tool_name)"
                    " SELECT $1, $2, key, $4 FROM unnest($3::text[]) AS key"
                    " ON CONFLICT (session_id, effect_key) DO NOTHING RETURNING effect_key",
                    self.ids.session_id,
                    self.ids.gym_id,
                    keys,
                    name,
                )
                mine = [row["effect_key"] for row in claimed]
                if len(mine) < len(keys):
                    first = await conn.fetchrow(
                        "SELECT result, effect_id FROM tool_effects WHERE session_id = $1 AND gym_id = $2"
                        " AND effect_key = ANY($3::text[]) AND result IS NOT NULL ORDER BY created_at LIMIT 1",
                        self.ids.session_id,
                        self.ids.gym_id,
                        keys,
                    )
                    if first is not None:
                        logger.info("tool %s: a repeat of a done call; its first result is returned", name)
                        # The other key(s) of this call now point at the same effect too.
                        await self._record(conn, mine, first["result"], first["effect_id"])
                        return str(first["result"])
                if self._ensure_session is not None:
                    await self._ensure_session(conn)
                effect = await write(conn, args)
                await self._record(conn, mine, effect.said, effect.effect_id)
        if effect.after_commit is not None:
            await effect.after_commit()
        return effect.said

    async def _record(self, conn: Any, keys: list[str], said: str, effect_id: Any) -> None:
        if keys:
            await conn.execute(
                "UPDATE tool_effects SET result = $3, effect_id = $4"
                " WHERE session_id = $1 AND effect_key = ANY($2::text[])",
                self.ids.session_id,
                keys,
                said,
                effect_id,
            )

    async def _check_member(self) -> None:
        """Defence in depth: the session's member must belong to the session's gym."""
        if self._member_checked:
            return
        async with self._connection() as conn:
            found = await conn.fetchval(
                "SELECT 1 FROM gym_members WHERE id = $1 AND gym_id = $2", self.ids.member_id, self.ids.gym_id
            )
        if not found:
            logger.error("session %s: member is not in the session's gym; tools refused", self.ids.session_id)
            raise ToolFailure("Je ne peux rien faire dans cette session, l'accueil va t'aider.")
        self._member_checked = True

    # The pool is acquired with a timeout so a dead database costs seconds, not the session.
    def _connection(self) -> Any:
        return self._pool.acquire(timeout=self._db_timeout_s)

    async def _gym_row(self, conn: Any) -> Any:
        row = await conn.fetchrow(
            "SELECT name, address, timezone, opening_hours, equipment, classes, prices FROM gyms WHERE id = $1",
            self.ids.gym_id,
        )
        if row is None:
            raise ToolFailure("Je ne retrouve pas la salle.")
        return row

    async def display_video_tutorial(self, args: VideoArgs) -> str:
        async with self._connection() as conn:
            rows = await conn.fetch(
                "SELECT slug, title, aliases, url FROM exercise_videos WHERE gym_id = $1 ORDER BY slug",
                self.ids.gym_id,
            )
        scored = [(match_score(args.exercise, [r["slug"], r["title"], *r["aliases"]]), r) for r in rows]
        scored.sort(key=lambda pair: pair[0], reverse=True)
        if not scored or scored[0][0] < 0.75:
            titles = ", ".join(r["title"].lower() for r in rows[:6])
            suffix = f" Vidéos disponibles : {titles}." if titles else ""
            raise ToolFailure(f"Je n'ai pas de vidéo pour « {args.exercise} ».{suffix}")
        video = scored[0][1]
        if self.kiosk is None:
            raise ToolFailure(f"La vidéo « {video['title']} » existe, mais aucun écran n'est relié à cette session.")
        try:
            shown = await self.kiosk.show_video(video["url"], video["title"])
        except Exception as exc:  # an RPC error or timeout: the kiosk is the problem, not the member
            logger.warning("kiosk did not answer the video RPC (%s)", type(exc).__name__)
            shown = False
        if not shown:
            raise ToolFailure(f"La vidéo « {video['title']} » existe, mais l'écran de la borne n'a pas répondu.")
        return f"La vidéo « {video['title']} » est affichée sur l'écran de la borne."

    async def _pick_coach(self, conn: Any, first_name: str | None) -> Any:
        coaches = await conn.fetch(
            "SELECT id, first_name, availability FROM gym_staff"
            " WHERE gym_id = $1 AND role = 'coach' AND is_active ORDER BY first_name",
            self.ids.gym_id,
        )
        if first_name:
            wanted = normalize_name(first_name)
            for coach in coaches:
                if normalize_name(coach["first_name"]) == wanted:
                    return coach
            names = ", ".join(c["first_name"] for c in coaches)
            raise ToolFailure(f"Il n'y a pas de coach nommé {first_name} ici. Les coachs de la salle : {names}.")
        preferred = await conn.fetchval(
            "SELECT preferred_coach_id FROM gym_members WHERE id = $1 AND gym_id = $2",
            self.ids.member_id,
            self.ids.gym_id,
        )
        for coach in coaches:
            if coach["id"] == preferred:
                return coach
        return coaches[0] if coaches else None

    # The write tools run inside `_exactly_once`'s transaction, on its connection: their row
    # and the record of their result commit together, or neither does.

    async def _contact_coach(self, conn: Any, args: CoachArgs) -> Effect:
        coach = await self._pick_coach(conn, None)
        request_id = await conn.fetchval(
            "INSERT INTO coach_requests (gym_id, member_id, coach_id, session_id, message, urgency)"
            f" VALUES ($1, $2, $3, {SESSION_REF.format('$4')}, $5, $6)"
            " RETURNING id",
            self.ids.gym_id,
            self.ids.member_id,
            coach["id"] if coach else None,
            self.ids.session_id,
            args.message,
            args.urgency,
        )
        notification = CoachNotification(
            str(request_id), self.ids.gym_id, str(coach["id"]) if coach else None, args.urgency
        )

        async def notify() -> None:
            try:
                await self._notify_coach(notification)
            except Exception:  # the request is recorded: a failed push must not undo it
                logger.exception("coach notification hook failed for request %s", request_id)

        when = {"high": "dans les dix minutes", "medium": "dans l'heure", "low": "dans la journée"}[args.urgency]
        who = coach["first_name"] if coach else "l'équipe"
        return Effect(f"C'est transmis à {who}, qui reviendra vers toi {when}.", request_id, notify)

    async def _book_session(self, conn: Any, args: BookingArgs) -> Effect:
        try:
            requested = datetime.fromisoformat(args.starts_at)
        except ValueError:
            raise ToolFailure(
                f"Je n'ai pas compris la date « {args.starts_at} » : rien n'est réservé. "
                "Demande au membre le jour et l'heure."
            ) from None
        gym = await self._gym_row(conn)
        zone = ZoneInfo(gym["timezone"])
        starts = requested.replace(tzinfo=zone) if requested.tzinfo is None else requested.astimezone(zone)
        ends = starts + timedelta(minutes=BOOKING_DURATION_MIN)
        now = self._now().astimezone(zone)
        if starts <= now:
            raise ToolFailure(f"Impossible : le {say_datetime(starts)} est déjà passé. Rien n'est réservé.")
        if starts > now + timedelta(days=BOOKING_HORIZON_DAYS):
            raise ToolFailure("On ne peut réserver que dans les trois prochains mois.")
        day = DAY_KEYS[starts.weekday()]
        opening = _jsonb(gym["opening_hours"]).get(day) or []
        if ends.date() != starts.date() or not _slot_fits(opening, starts.time(), ends.time()):
            hours = _say_ranges(opening)
            said = f"le {DAY_NAMES[day]}, elle est ouverte {hours}" if hours else f"elle est fermée le {DAY_NAMES[day]}"
            raise ToolFailure(f"La salle est fermée à ce moment-là : {said}. Rien n'est réservé.")
        coach = await self._pick_coach(conn, args.coach)
        if coach is None:
            raise ToolFailure("Aucun coach n'est disponible dans cette salle.")
        # Lock the coach so two kiosks cannot book the same hour.
        await conn.execute("SELECT id FROM gym_staff WHERE id = $1 FOR UPDATE", coach["id"])
        available = _jsonb(coach["availability"]).get(day) or []
        if not _slot_fits(available, starts.time(), ends.time()):
            hours = _say_ranges(available)
            said = (
                f"le {DAY_NAMES[day]}, {coach['first_name']} est disponible {hours}"
                if hours
                else (f"{coach['first_name']} ne travaille pas le {DAY_NAMES[day]}")
            )
            raise ToolFailure(f"{coach['first_name']} n'est pas disponible à cette heure : {said}. Rien n'est réservé.")
        clashes = await conn.fetch(
            "SELECT id, member_id::text AS member_id, starts_at FROM bookings WHERE gym_id = $1 AND coach_id = $2"
            " AND status = 'confirmed' AND starts_at < $4"
            " AND starts_at + make_interval(mins => duration_min) > $3",
            self.ids.gym_id,
            coach["id"],
            starts,
            ends,
        )
        for clash in clashes:
            # The member's own booking of this very hour (asked again in a later turn, after a
            # barge-in): it is booked, and that is what the member must hear.
            if clash["member_id"] == self.ids.member_id and clash["starts_at"] == starts:
                return Effect(
                    f"C'est déjà réservé : séance avec {coach['first_name']} le {say_datetime(starts)}.", clash["id"]
                )
        if clashes:
            raise ToolFailure(f"{coach['first_name']} a déjà une séance le {say_datetime(starts)}. Rien n'est réservé.")
        booking_id = await conn.fetchval(
            "INSERT INTO bookings (gym_id, member_id, coach_id, session_id, starts_at, duration_min)"
            f" VALUES ($1, $2, $3, {SESSION_REF.format('$4')}, $5, $6) RETURNING id",
            self.ids.gym_id,
            self.ids.member_id,
            coach["id"],
            self.ids.session_id,
            starts,
            BOOKING_DURATION_MIN,
        )
        return Effect(f"C'est réservé : séance avec {coach['first_name']} le {say_datetime(starts)}.", booking_id)

    async def _log_churn_risk(self, conn: Any, args: ChurnArgs) -> Effect:
        flag_id = await conn.fetchval(
            "INSERT INTO churn_flags (gym_id, member_id, session_id, reason, severity)"
            f" VALUES ($1, $2, {SESSION_REF.format('$3')}, $4, $5) RETURNING id",
            self.ids.gym_id,
            self.ids.member_id,
            self.ids.session_id,
            args.reason,
            args.severity,
        )
        return Effect(
            "C'est noté pour le responsable de la salle. Ne le mentionne pas au membre : continue de l'aider.", flag_id
        )

    async def _create_mission(self, conn: Any, args: MissionArgs) -> Effect:
        mission_id = await conn.fetchval(
            "INSERT INTO missions (gym_id, session_id, member_id, title, description)"
            f" VALUES ($1, {SESSION_REF.format('$2')}, $3, $4, $5) RETURNING id",
            self.ids.gym_id,
            self.ids.session_id,
            self.ids.member_id,
            args.title,
            args.description,
        )
        return Effect(f"C'est transmis à l'équipe : « {args.title} ».", mission_id)

    async def get_gym_info(self, args: GymInfoArgs) -> str:
        async with self._connection() as conn:
            gym = await self._gym_row(conn)
        if args.topic == "adresse":
            return f"{gym['name']} se trouve {gym['address']}."
        if args.topic == "horaires":
            hours = say_opening_hours(_jsonb(gym["opening_hours"]))
            return f"La salle est ouverte {hours}." if hours else "Les horaires ne sont pas renseignés."
        if args.topic == "equipements":
            equipment = list(gym["equipment"])
            return f"Équipements : {', '.join(equipment)}." if equipment else "Les équipements ne sont pas renseignés."
        if args.topic == "cours":
            classes = _jsonb(gym["classes"])
            said = [
                f"{c['name']} le {DAY_NAMES.get(c.get('day', ''), c.get('day', ''))} à {say_clock(c['time'])}"
                + (f" avec {c['coach']}" if c.get("coach") else "")
                for c in classes
                if c.get("name") and c.get("time")
            ]
            return f"Cours collectifs : {'; '.join(said)}." if said else "Il n'y a pas de cours collectif au planning."
        prices = [
            f"{p['label']} : {say_price(float(p['eur']))}"
            for p in _jsonb(gym["prices"])
            if p.get("label") and "eur" in p
        ]
        return (
            f"Tarifs : {'; '.join(prices)}."
            if prices
            else "Les tarifs ne sont pas renseignés, l'accueil te renseignera."
        )

    async def get_member_stats(self, args: NoArgs) -> str:
        async with self._connection() as conn:
            gym = await self._gym_row(conn)
            visits = await conn.fetch(
                "SELECT visited_at FROM member_visits WHERE gym_id = $1 AND member_id = $2"
                " AND visited_at > now() - interval '365 days' ORDER BY visited_at DESC",
                self.ids.gym_id,
                self.ids.member_id,
            )
        if not visits:
            return "Aucune visite enregistrée pour l'instant : c'est le moment de commencer !"
        zone = ZoneInfo(gym["timezone"])
        now = self._now().astimezone(zone)
        moments = [v["visited_at"].astimezone(zone) for v in visits]
        last_30 = sum(1 for m in moments if m > now - timedelta(days=30))
        per_week = sum(1 for m in moments if m > now - timedelta(days=28)) / 4
        streak = _week_streak({m.date() for m in moments}, now.date())
        parts = [
            f"{say_number(last_30, feminine=True)} visite{'s' * (last_30 > 1)} ces trente derniers jours",
            f"environ {_say_rate(per_week)} par semaine",
            f"dernière visite le {say_date(moments[0].date())}",
        ]
        if streak >= 2:
            parts.append(f"venu chaque semaine depuis {say_number(streak, feminine=True)} semaines")
        return "Statistiques : " + ", ".join(parts) + "."


def _say_rate(per_week: float) -> str:
    rounded = round(per_week * 2) / 2
    if rounded < 1:
        return "moins d'une fois"
    whole = int(rounded)
    text = say_number(whole, feminine=True)
    return f"{text} fois et demie" if rounded != whole else f"{text} fois"


def _week_streak(days: set[date], today: date) -> int:
    """Consecutive weeks with at least one visit, counting back from this week (or last week)."""
    week_start = today - timedelta(days=today.weekday())
    visited_weeks = {d - timedelta(days=d.weekday()) for d in days}
    if week_start not in visited_weeks:
        week_start -= timedelta(days=7)  # this week is not over yet
    streak = 0
    while week_start in visited_weeks:
        streak += 1
        week_start -= timedelta(days=7)
    return streak


# --- LiveKit wrapping -----------------------------------------------------------------------


def livekit_tools(tools: GymTools) -> list[RawFunctionTool]:
    """The gym tools as LiveKit function tools with French JSON schemas."""
    return [_livekit_tool(tools, spec) for spec in TOOL_SPECS]


def _livekit_tool(tools: GymTools, spec: ToolSpec) -> RawFunctionTool:
    async def run_tool(raw_arguments: dict[str, object], context: RunContext) -> str:
        # The call id names this call; the speech handle is the member's turn (a reply's tool
        # steps share it), so a model re-issuing the same write within one answer is caught.
        call = tools.call(
            spec.name, dict(raw_arguments), call_id=context.function_call.call_id, turn=context.speech_handle.id
        )
        try:
            if spec.name not in WRITE_TOOLS:
                return await call
            # Shielded: a barge-in or the session's end never cuts a write between its statements.
            running = asyncio.ensure_future(call)
            try:
                return await asyncio.shield(running)
            except asyncio.CancelledError:
                return await _outcome_of_cancelled_write(spec, running)
        except ToolFailure as failure:
            raise ToolError(failure.message) from None

    return function_tool(
        run_tool,
        raw_schema={"name": spec.name, "description": spec.description, "parameters": tool_json_schema(spec)},
    )


async def _outcome_of_cancelled_write(spec: ToolSpec, running: asyncio.Future[str]) -> str:
    """A write the member talked over may already be committed: its true result is returned.

    Returned, not raised: LiveKit then puts it in the chat context as this call's output, so
    the LLM knows the booking exists, does not call the tool again, and tells the member
    "c'est réservé". A write that failed or did not finish stays cancelled (nothing happened).
    """
    # A failed write has nothing to report; its error is read here so asyncio does not log it.
    running.add_done_callback(lambda task: task.cancelled() or task.exception())
    done, _ = await asyncio.wait([running], timeout=2 * DB_TIMEOUT_S)
    if running in done and not running.cancelled() and running.exception() is None:
        logger.info("tool %s: cancelled after its write committed; its result is kept", spec.name)
        return running.result()
    raise asyncio.CancelledError


__all__ = [
    "TOOL_SPECS",
    "WRITE_TOOLS",
    "CoachNotification",
    "GymTools",
    "Kiosk",
    "RoomKiosk",
    "SessionIds",
    "ToolFailure",
    "livekit_tools",
    "tool_json_schema",
]
