"""The worker: registers as ``jarvis`` for explicit dispatch and runs one job per kiosk session."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
from typing import Any

from kyutai_common.runtime import freeze_startup_objects, log_slow_collections
from livekit import rtc
from livekit.agents import AgentServer, AgentSession, JobContext, JobExecutorType, JobProcess, JobRequest
from livekit.agents.telemetry.pii import is_pii_attribute
from prometheus_client import Gauge

from agent.context_loader import load_member_context
from agent.conversation import start_conversation
from agent.engine_load import EngineWatch
from agent.heartbeat import CapacityHeartbeat
from agent.llm import build_llm
from agent.metrics import ERRORS, SESSIONS_ACTIVE, TURN_METRICS_TOPIC, TurnLatency, kiosk_publisher
from agent.metrics_files import fold_ended_processes
from agent.resources import SessionResources
from agent.settings import AgentSettings
from agent.sweeper import Sweeper
from agent.voice import build_speech
from agent.worker_load import WorkerLoad
from jarvis.context_store import claim_session, end_session_claim
from jarvis.session_contract import (
    ATTR_GYM_ID,
    ATTR_MEMBER_ID,
    ATTR_READY,
    ATTR_SESSION_ID,
    SessionMetadata,
    SessionMetadataError,
)

logger = logging.getLogger("jarvis.agent")

# Disconnects that end the visit: the kiosk said goodbye, or someone removed it or the room. Any
# other (a signal socket closed, a timeout, a second connection with its identity) may be a kiosk
# on flaky gym Wi-Fi that is coming back.
KIOSK_LEFT_ON_PURPOSE = frozenset(
    {
        rtc.DisconnectReason.CLIENT_INITIATED,
        rtc.DisconnectReason.PARTICIPANT_REMOVED,
        rtc.DisconnectReason.ROOM_DELETED,
        rtc.DisconnectReason.ROOM_CLOSED,
    }
)


class RoutineEndOfTurnNotice(logging.Filter):
    """livekit-agents warns whenever the STT ends a turn while silero still hears speech. Here that
    is every turn: Kyutai's end-of-speech head ends it before silero's silence hangover does (the
    point of STT turn detection). As a warning it would bury the real ones; it stays at debug."""

    MESSAGE = "stt end of speech received while vad is still in a speech segment"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.WARNING and record.getMessage().startswith(self.MESSAGE):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


class MemberWordsOutOfLogs(logging.Filter):
    """livekit-agents attaches what the member said, JARVIS's replies and tool arguments to some of
    its log records ("skipping user input", "final transcript not received": overload warnings) as
    ``lk.pii.*`` fields. Its telemetry drops such fields before export; its log handlers print them.
    A gym's logs hold no member's words: the fields go (livekit's own test of what is personal), the
    warning stays."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key in [key for key in vars(record) if is_pii_attribute(key)]:
            delattr(record, key)
        return True


def quiet_routine_notices() -> None:
    """livekit-agents' log as the gym's ops read it, once per process."""
    livekit_logger = logging.getLogger("livekit.agents")
    for kind in (RoutineEndOfTurnNotice, MemberWordsOutOfLogs):
        if not any(isinstance(f, kind) for f in livekit_logger.filters):
            livekit_logger.addFilter(kind())


PREWARMED_LLM = "llm"  # JobProcess.userdata key: the session's LLM client, built at warm-up


def prewarm(proc: JobProcess) -> None:
    """An idle job process's warm-up, before any kiosk waits on it: everything a session would
    otherwise do once on its event loop, where livekit-agents' loop monitor measured it holding
    the member's audio (Dec 5, 2-core box): the speech plugins' imports (350-430 ms), the LLM
    client's and the engine health reads' TLS contexts (160-330 ms each), anyio's backend (230 ms),
    the hyphenator's tables used by the TTS's word splitting (110-130 ms), the HTTP modules the LLM
    client loads on its first request (110-200 ms each). Then it all leaves the garbage collector's
    reach, whose full collections over it held a session's process 70-80 ms."""
    quiet_routine_notices()
    settings = AgentSettings()
    if settings.speech.mode != "text":
        import kyutai_stt.stt  # noqa: F401  (the packages load their plugins lazily)
        import kyutai_tts.tts  # noqa: F401
        from kyutai_common.client import health_tls

        health_tls()  # the replicas' health reads share one TLS context, built here
    import anyio._backends._asyncio  # noqa: F401

    # ...and what the LLM client's first request imports (httpx loads httpcore, and httpcore its
    # anyio backend, only when a connection opens; the client's pages on first use): the loop
    # monitor saw each hold a session's first turn 110-200 ms on a loaded box (Dec 5, 8 kiosks).
    import httpcore._backends.anyio  # noqa: F401
    import openai.pagination  # noqa: F401
    from livekit.agents.tokenize import basic

    basic.hyphenate_word("entraînement")
    try:
        proc.userdata[PREWARMED_LLM] = build_llm(settings.llm)
    except ValueError:
        pass  # the session builds it again and says what is wrong in its own log line
    freeze_startup_objects(logger)
    log_slow_collections(logger)  # from here on: the freeze's own full collection is no news


def kiosk_present(room: rtc.Room) -> bool:
    return any(p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT for p in room.remote_participants.values())


async def entrypoint(ctx: JobContext) -> None:
    settings = AgentSettings()
    try:
        meta = SessionMetadata.parse(ctx.job.metadata)
    except SessionMetadataError as exc:
        logger.error("job %s refused: %s", ctx.job.id, exc)
        ctx.shutdown(reason="bad job metadata")
        return

    resources = await SessionResources.open(settings)
    ctx.add_shutdown_callback(resources.aclose)
    if not await claim_session(
        resources.redis, resources.db_pool, meta.session_id, ctx.job.id, resources.settings.db_timeout_s
    ):
        # A rejoin with a spent token: a second job would overwrite the first one's record.
        logger.warning("session %s: job %s refused, the session has already ended", meta.session_id, ctx.job.id)
        await ctx.delete_room(meta.room)  # the kiosk is sent away at once, not left waiting for JARVIS
        ctx.shutdown(reason="session token already used")
        return
    resources.on_close(lambda _reason: end_session_claim(resources.redis, meta.session_id))
    context = await load_member_context(meta, redis=resources.redis, db_pool=resources.db_pool)
    await ctx.connect()

    async def close_session() -> None:
        # The token is spent before the room goes: a rejoin racing the close finds it ended.
        await end_session_claim(resources.redis, meta.session_id)
        await ctx.delete_room()
        ctx.shutdown(reason="kiosk left")

    closing: set[asyncio.Task[None]] = set()  # the room's close, once it has begun
    waiting: set[asyncio.Task[None]] = set()  # a dropped kiosk's grace

    def close_now() -> None:
        for wait in waiting:
            wait.cancel()
        closing.add(asyncio.get_running_loop().create_task(close_session()))

    async def close_unless_back(reason: str) -> None:
        await asyncio.sleep(settings.kiosk_rejoin_grace_s)
        waiting.clear()
        if kiosk_present(ctx.room):
            logger.info("session %s: kiosk back after its link dropped (%s)", meta.session_id, reason)
        elif not closing:
            logger.info("session %s: kiosk not back %.0f s after its link dropped (%s), closing the room",
                        meta.session_id, settings.kiosk_rejoin_grace_s, reason)
            close_now()

    def on_participant_left(participant: rtc.RemoteParticipant) -> None:
        # The kiosk is the session: when it leaves, the room has no reason to live on.
        if participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT or closing:
            return
        reason = rtc.DisconnectReason.Name(participant.disconnect_reason or rtc.DisconnectReason.UNKNOWN_REASON)
        if participant.disconnect_reason in KIOSK_LEFT_ON_PURPOSE:
            logger.info("session %s: kiosk left (%s), closing the room", meta.session_id, reason)
            close_now()
        elif not waiting:
            # A dropped link: the kiosk rejoins this room with the same token (kiosk/src/reconnect.ts,
            # 7.5 s of attempts). Closing at once spent its token and deleted the room it came back to.
            logger.info("session %s: kiosk link dropped (%s), waiting %.0f s for it to rejoin",
                        meta.session_id, reason, settings.kiosk_rejoin_grace_s)
            waiting.add(asyncio.get_running_loop().create_task(close_unless_back(reason)))

    ctx.room.on("participant_disconnected", on_participant_left)
    gym_voice = context.gym.agent_settings.get("voice")
    speech = build_speech(settings.speech, context.gym.id, gym_voice if isinstance(gym_voice, str) else None)
    session = await start_conversation(ctx, context, resources, speech=speech,
                                       llm=ctx.proc.userdata.pop(PREWARMED_LLM, None))
    watch_session(session, resources, meta.session_id, ctx.room)
    await ctx.room.local_participant.set_attributes(
        {ATTR_SESSION_ID: meta.session_id, ATTR_GYM_ID: meta.gym_id, ATTR_MEMBER_ID: meta.member_id, ATTR_READY: "1"}
    )
    logger.info("session %s: ready (gym=%s kiosk=%s)", meta.session_id, meta.gym_id, meta.kiosk_id)


def watch_session(
    session: AgentSession[Any], resources: SessionResources, session_id: str, room: rtc.Room | None = None
) -> TurnLatency:
    """Per-turn stage times and errors: each finished turn to Prometheus and to the kiosk
    (data topic ``jarvis.turn_metrics``), the turns and counts to voice_sessions at the end."""
    latency = TurnLatency(publish=kiosk_publisher(room, TURN_METRICS_TOPIC, session_id, audio_jitter=True))
    session.on("metrics_collected", latency.on_metrics)
    session.on("speech_created", latency.on_speech_created)
    session.on("error", lambda event: ERRORS.labels(_error_kind(event)).inc())
    SESSIONS_ACTIVE.inc()

    async def record_summary(_reason: str) -> None:
        SESSIONS_ACTIVE.dec()
        summary = latency.summary()
        logger.info(
            "session %s: %d turn(s), counts %s, agent v2v p50 %s ms", session_id, len(summary["turns"]),
            summary["counts"], summary.get("agent_v2v_ms_p50"),
        )
        try:
            await resources.db_pool.execute(
                "UPDATE voice_sessions SET latency_summary = $1::jsonb WHERE id = $2::uuid",
                json.dumps(summary), session_id,
            )
        except Exception as exc:  # the summary is a nicety; the session's record is already written
            ERRORS.labels("database").inc()
            logger.warning("session %s: latency summary not stored (%s)", session_id, type(exc).__name__)

    resources.on_close(record_summary)
    return latency


def _error_kind(event: Any) -> str:
    source = type(getattr(event, "source", None)).__module__
    for kind in ("stt", "tts", "llm"):
        if f".{kind}" in source or f"kyutai_{kind}" in source:
            return kind
    return type(getattr(event, "error", event)).__name__


def engine_watch(settings: AgentSettings) -> EngineWatch | None:
    """The engines this worker's sessions stream to (the plugins' own settings), when it speaks."""
    if settings.speech.mode != "kyutai" or settings.engine_poll_s <= 0:
        return None
    import kyutai_stt.settings
    import kyutai_tts.settings

    engines = {
        "stt": kyutai_stt.settings.PluginSettings().replica_urls(),
        "tts": kyutai_tts.settings.PluginSettings().replica_urls(),
    }
    return EngineWatch(engines, interval_s=settings.engine_poll_s)


def build_server(settings: AgentSettings | None = None) -> AgentServer:
    settings = settings or AgentSettings()
    engines = engine_watch(settings)

    heartbeat = CapacityHeartbeat(settings, engines)
    load = WorkerLoad(settings.max_sessions, settings.load_threshold, engines)

    def worker_load(server: AgentServer) -> float:
        if engines is not None:
            engines.start()  # here, not in build_server: only the main process (never a job) polls
        # Sessions, not host CPU: on a shared host the CPU reading says more about the
        # neighbours than about this worker's room for another kiosk.
        now = load.load(server)
        heartbeat.note(server, now)  # the token service's admission control reads it (issue 13)
        return now

    server = AgentServer(
        job_executor_type=JobExecutorType(settings.job_executor),
        num_idle_processes=settings.num_idle_processes,
        initialize_process_timeout=settings.process_init_timeout_s,
        # The worker says yes or no to each job itself (agent/worker_load.py): livekit-agents'
        # threshold made an idle worker report itself full while it started a job.
        load_threshold=math.inf,
        load_fnc=worker_load,
        setup_fnc=prewarm,
        prometheus_port=settings.prometheus_port or None,
        port=0,
    )

    async def on_request(request: JobRequest) -> None:
        await load.on_request(request, server)

    server.rtc_session(entrypoint, agent_name=settings.agent_name, on_request=on_request)
    run_in_main_process(server, settings)
    return server


TASKS_SAMPLE_S = 5.0


async def count_tasks() -> None:
    """The main loop's tasks, for ``jarvis_worker_event_loop_tasks``: jobs come and go with their
    processes, so a leak in what outlives every session shows as growth between two idle moments
    (bench.voice_loop --soak reads it before and after)."""
    # Made here, not at import: livekit-agents empties PROMETHEUS_MULTIPROC_DIR as the worker starts,
    # and a value made before is then never exported.
    gauge = Gauge("jarvis_worker_event_loop_tasks", "asyncio tasks on the worker's main event loop",
                  multiprocess_mode="livemax")
    while True:
        gauge.set(len(asyncio.all_tasks()))
        await asyncio.sleep(TASKS_SAMPLE_S)


METRICS_FOLD_S = 30.0


async def fold_metrics_of_ended_jobs() -> None:
    """Every ``METRICS_FOLD_S``, the metric files of job processes that ended are folded
    (agent/metrics_files.py): a scrape then reads a few files however many visits the worker served."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not folder:
        return
    while True:
        await asyncio.sleep(METRICS_FOLD_S)
        try:
            folded = await asyncio.to_thread(fold_ended_processes, folder)
        except OSError as exc:  # a full or vanished folder costs metrics, never the worker
            logger.warning("could not fold the metric files of ended jobs in %s: %s", folder, exc)
            continue
        if folded:
            logger.debug("folded the metric files of %d ended job processes", folded)


def run_in_main_process(server: AgentServer, settings: AgentSettings) -> None:
    """In the worker's main process, from its start (jobs run in their own processes, forked from a
    forkserver, and never run these): the session-log sweeper (agent/sweeper.py), the count of
    the main loop's tasks behind ``jarvis_worker_event_loop_tasks``, and the folding of ended jobs'
    metric files."""
    running: set[asyncio.Task[None]] = set()

    def start() -> None:
        loop = asyncio.get_running_loop()
        running.add(loop.create_task(Sweeper(settings).run(), name="session-log-sweeper"))
        running.add(loop.create_task(count_tasks(), name="event-loop-task-count"))  # held: the loop keeps weak refs
        running.add(loop.create_task(fold_metrics_of_ended_jobs(), name="fold-ended-job-metrics"))

    server.on("worker_started", start)
