"""The worker: registers as ``jarvis`` for explicit dispatch and runs one job per kiosk session."""

from __future__ import annotations

import logging

from livekit import rtc
from livekit.agents import AgentServer, JobContext

from agent.context_loader import SessionMetadata, SessionMetadataError, load_member_context
from agent.conversation import start_conversation
from agent.resources import SessionResources
from agent.settings import AgentSettings
from agent.voice import build_speech

logger = logging.getLogger("jarvis.agent")

# Participant attributes the agent publishes once it holds the member's context. Ids only.
ATTR_SESSION_ID = "jarvis.session_id"
ATTR_GYM_ID = "jarvis.gym_id"
ATTR_MEMBER_ID = "jarvis.member_id"
ATTR_READY = "jarvis.ready"


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
    context = await load_member_context(meta, redis=resources.redis, db_pool=resources.db_pool)
    await ctx.connect()

    def on_participant_left(participant: rtc.RemoteParticipant) -> None:
        # The kiosk is the session: when it leaves, the room has no reason to live on.
        if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            logger.info("session %s: kiosk left, closing the room", meta.session_id)
            ctx.delete_room()
            ctx.shutdown(reason="kiosk left")

    ctx.room.on("participant_disconnected", on_participant_left)
    speech = build_speech(settings.speech, context.gym.id)
    await start_conversation(ctx, context, resources, speech=speech)
    await ctx.room.local_participant.set_attributes(
        {ATTR_SESSION_ID: meta.session_id, ATTR_GYM_ID: meta.gym_id, ATTR_MEMBER_ID: meta.member_id, ATTR_READY: "1"}
    )
    logger.info("session %s: ready (gym=%s kiosk=%s)", meta.session_id, meta.gym_id, meta.kiosk_id)


def build_server(settings: AgentSettings | None = None) -> AgentServer:
    settings = settings or AgentSettings()
    max_sessions = max(1, settings.max_sessions)

    def session_load(server: AgentServer) -> float:
        # Sessions, not host CPU: on a shared host the CPU reading says more about the
        # neighbours than about this worker's room for another kiosk.
        return len(server.active_jobs) / max_sessions

    server = AgentServer(
        num_idle_processes=settings.num_idle_processes,
        load_threshold=settings.load_threshold,
        load_fnc=session_load,
        prometheus_port=settings.prometheus_port or None,
        port=0,
    )
    server.rtc_session(entrypoint, agent_name=settings.agent_name)
    return server
