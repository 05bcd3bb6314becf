"""The conversation: one AgentSession with the member's prompt, the gym tools and the LLM.

Speech is optional here: without STT/TTS the session runs in text mode (the kiosk's chat
messages in, text out), which is how the brain is tested. The speech plugins are passed in
by whoever builds the session (`stt`, `tts`, `vad`), nothing else changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, JobContext, room_io
from livekit.agents import llm as lk_llm
from livekit.agents import stt as lk_stt
from livekit.agents import tts as lk_tts
from livekit.agents import vad as lk_vad
from livekit.agents.llm import LLMError, mcp
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.agents.voice.events import ErrorEvent
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit.agents.voice.turn import TurnHandlingOptions

from agent.barge_in import BargeIn, replay_paused_audio
from agent.llm import LLMConfig, build_llm, llm_connect_options
from agent.metrics import BARGE_IN_TOPIC, kiosk_publisher
from agent.prompt import build_instructions, greeting
from agent.resources import SessionResources
from agent.session_log import SessionLog
from agent.tools import (
    TOOL_SPECS,
    CoachNotifier,
    GymTools,
    Kiosk,
    RoomKiosk,
    SessionIds,
    livekit_tools,
    log_only_notifier,
)
from agent.voice import Speech, SpeechSettings, turn_handling
from jarvis.context import MemberContext
from jarvis.settings import DB_TIMEOUT_S

logger = logging.getLogger("jarvis.agent.conversation")

# A member asks one thing at a time: a tool result, then the answer; a third step is a loop.
MAX_TOOL_STEPS = 3


class JarvisAgent(Agent):
    """JARVIS for one member: the personalised instructions and the gym's tools."""

    def __init__(
        self,
        context: MemberContext,
        tools: GymTools,
        *,
        mcp_servers: list[mcp.MCPServer] | None = None,
        now: datetime | None = None,
    ) -> None:
        gym_toolsets: list[lk_llm.Tool | lk_llm.Toolset] = [
            mcp.MCPToolset(id=f"gym-mcp-{index}", mcp_server=server) for index, server in enumerate(mcp_servers or [])
        ]
        super().__init__(instructions=build_instructions(context, now), tools=[*livekit_tools(tools), *gym_toolsets])


@dataclass
class Conversation:
    session: AgentSession[GymTools]
    agent: JarvisAgent
    tools: GymTools
    log: SessionLog
    greeting: str


def external_mcp_servers(agent_settings: dict[str, Any]) -> list[mcp.MCPServer]:
    """The gym's own MCP servers, from gyms.agent_settings.mcp_servers: [{"url": ..., ...}]."""
    ours = {spec.name for spec in TOOL_SPECS}
    servers: list[mcp.MCPServer] = []
    for entry in agent_settings.get("mcp_servers") or []:
        url = entry.get("url") if isinstance(entry, dict) else None
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            logger.warning("ignoring an MCP server entry without an http(s) url")
            continue
        allowed = entry.get("allowed_tools")
        servers.append(
            mcp.MCPServerHTTP(
                url=url,
                transport_type="sse" if entry.get("transport") == "sse" else "streamable_http",
                # A gym's tool may not shadow one of ours: the gym tools hold the tenant rules.
                allowed_tools=[t for t in allowed if t not in ours] if isinstance(allowed, list) else None,
                headers=entry.get("headers") if isinstance(entry.get("headers"), dict) else None,
                timeout=float(entry.get("timeout_s", 5)),
                client_session_timeout_seconds=float(entry.get("timeout_s", 5)),
            )
        )
    return servers


def build_conversation(
    context: MemberContext,
    *,
    pool: Any,
    llm: lk_llm.LLM | None,
    llm_conn_options: Any = None,
    kiosk: Kiosk | None = None,
    stt: lk_stt.STT | None = None,
    tts: lk_tts.TTS | None = None,
    vad: lk_vad.VAD | None = None,
    turn_handling: TurnHandlingOptions | None = None,
    aec_warmup_s: float | None = None,
    notify_coach: CoachNotifier = log_only_notifier,
    mcp_servers: list[mcp.MCPServer] | None = None,
    now: datetime | None = None,
    db_timeout_s: float = DB_TIMEOUT_S,
) -> Conversation:
    """Everything a session needs, not started yet; tests drive it with `session.run`."""
    ids = SessionIds(gym_id=context.gym.id, member_id=context.member.id, session_id=context.session_id)
    log = SessionLog(pool, context, db_timeout_s)
    tools = GymTools(
        pool, ids, kiosk=kiosk, notify_coach=notify_coach, db_timeout_s=db_timeout_s,
        ensure_session=log.ensure_session_row,
    )
    # Only what is given: AgentSession tells "not given" apart from None.
    options: dict[str, Any] = {"llm": llm, "stt": stt, "tts": tts}
    options = {key: value for key, value in options.items() if value is not None}
    # Always explicit: left out, LiveKit would pick its cloud turn detector and a default VAD.
    options["vad"] = vad
    options["turn_handling"] = turn_handling or text_turn_handling()
    if aec_warmup_s is not None:
        # None turns LiveKit's warm-up off (agent/voice.py, SpeechSettings.aec_warmup_s says why).
        options["aec_warmup_duration"] = aec_warmup_s or None
    if llm_conn_options is not None:
        options["conn_options"] = SessionConnectOptions(llm_conn_options=llm_conn_options)
    session: AgentSession[GymTools] = AgentSession(userdata=tools, max_tool_steps=MAX_TOOL_STEPS, **options)
    _apologise_when_the_llm_is_down(session)
    agent = JarvisAgent(context, tools, mcp_servers=mcp_servers, now=now)
    log.attach(session)
    return Conversation(session=session, agent=agent, tools=tools, log=log, greeting=greeting(context, now))


LLM_DOWN_APOLOGY = (
    "Désolé, je n'arrive pas à te répondre pour le moment. Réessaie dans un instant, ou demande à l'accueil."
)


# Said when the speech plugins gave up (every engine replica failed, after APIConnectOptions'
# retries): the member is asked to say it again rather than left in silence.
SPEECH_DOWN_APOLOGY = "Désolé, j'ai un souci technique, peux-tu répéter ?"


# The apologies as audio, made while the TTS works (see prepare_apologies), by (voice, text): with
# no TTS replica left the member still hears one. A few seconds of audio per gym voice and worker.
_APOLOGY_CLIPS: dict[tuple[str, str], list[rtc.AudioFrame]] = {}
_background: set[asyncio.Task[None]] = set()  # tasks held until done (the loop keeps weak references)


def _voice_key(tts: lk_tts.TTS) -> str:
    return f"{tts.provider}/{tts.model}/{getattr(tts, 'voice', '')}"


async def prepare_apologies(tts: lk_tts.TTS) -> None:
    """Synthesise the speech apology once per voice, so that it can be played when the TTS cannot speak.
    (The LLM apology is said while the TTS works: synthesising it too would double the cost at every
    session's start for nothing.)"""
    for text in (SPEECH_DOWN_APOLOGY,):
        key = (_voice_key(tts), text)
        if key in _APOLOGY_CLIPS:
            continue
        try:
            async with tts.synthesize(text) as stream:
                frames = [audio.frame async for audio in stream]
        except Exception as exc:  # the TTS is down already: the apology will be synthesised when asked
            logger.warning("could not prepare the apology audio (%s)", type(exc).__name__)
            return
        _APOLOGY_CLIPS[key] = frames
        seconds = sum(frame.duration for frame in frames)
        logger.info("apology audio ready (%.1f s): heard even with no TTS replica left", seconds)


async def _play(frames: list[rtc.AudioFrame]) -> AsyncIterator[rtc.AudioFrame]:
    for frame in frames:
        yield frame


def _apologise_when_the_llm_is_down(session: AgentSession[Any]) -> None:
    """When every LLM failed, or the speech engines did, the member hears a fixed apology instead of silence."""

    def apologise(text: str) -> None:
        clip = _APOLOGY_CLIPS.get((_voice_key(session.tts), text)) if session.tts is not None else None
        if clip:  # prepared audio: heard even when no TTS replica is left
            session.say(text, audio=_play(clip))
        else:
            session.say(text)

    def on_error(event: ErrorEvent) -> None:
        if isinstance(event.error, LLMError) and not event.error.recoverable:
            logger.error("all LLMs failed this turn; apologising")
            apologise(LLM_DOWN_APOLOGY)
        elif isinstance(event.error, (lk_stt.STTError, lk_tts.TTSError)) and not event.error.recoverable:
            # The error names the kind only: no transcript text in logs.
            logger.error("speech engines failed (%s); apologising", event.error.type)
            apologise(SPEECH_DOWN_APOLOGY)

    session.on("error", on_error)


def _kiosk_identity(room: rtc.Room) -> str | None:
    for participant in room.remote_participants.values():
        if participant.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return participant.identity
    return None


def text_turn_handling() -> TurnHandlingOptions:
    return turn_handling(SpeechSettings(mode="text"))


async def start_conversation(
    ctx: JobContext,
    context: MemberContext,
    resources: SessionResources,
    *,
    speech: Speech | None = None,
    notify_coach: CoachNotifier = log_only_notifier,
    llm: lk_llm.LLM | None = None,
) -> AgentSession[GymTools]:
    """Start talking with the member; returns once the conversation is running. ``llm``: one
    built from the same settings at the process's warm-up, else it is built here."""
    config: LLMConfig = resources.settings.llm
    try:
        llm = llm or build_llm(config)
    except ValueError as exc:
        # A misconfigured LLM must not cost the member the session: greet, then stay silent.
        logger.error("session %s: no LLM (%s); check JARVIS_LLM__* settings", context.session_id, exc)
        llm = None
    conversation = build_conversation(
        context,
        pool=resources.db_pool,
        llm=llm,
        llm_conn_options=llm_connect_options(config),
        kiosk=RoomKiosk(ctx.room, lambda: _kiosk_identity(ctx.room)),
        stt=speech.stt if speech else None,
        tts=speech.tts if speech else None,
        vad=speech.vad if speech else None,
        turn_handling=speech.turn_handling if speech else None,
        aec_warmup_s=speech.aec_warmup_s if speech else None,
        notify_coach=notify_coach,
        mcp_servers=external_mcp_servers(context.gym.agent_settings),
        db_timeout_s=resources.settings.db_timeout_s,
    )
    if speech is not None and speech.vad is not None:
        publish = kiosk_publisher(ctx.room, BARGE_IN_TOPIC, context.session_id)
        BargeIn(speech.barge_in, context.session_id, publish).attach(conversation.session, speech.vad)
    conversation.log.start()
    resources.on_close(conversation.log.finish)
    spoken = speech is not None and speech.stt is not None and speech.tts is not None
    await conversation.session.start(
        conversation.agent,
        room=ctx.room,
        room_options=room_io.RoomOptions(
            text_input=True,
            text_output=True,
            audio_input=(
                room_io.AudioInputOptions(
                    frame_size_ms=speech.input_frame_ms, auto_gain_control=speech.auto_gain_control
                )
                if spoken and speech
                else False
            ),
            audio_output=spoken,
        ),
    )
    if spoken:
        replay_paused_audio(conversation.session.output.audio)
    # Spoken at once from a fixed text: the member hears their name before any LLM call.
    greeting = conversation.session.say(conversation.greeting)
    if spoken and speech is not None and speech.tts is not None:
        task = asyncio.create_task(_prepare_after(greeting, speech.tts))
        _background.add(task)
        task.add_done_callback(_background.discard)
    return conversation.session


async def _prepare_after(greeting: SpeechHandle, tts: lk_tts.TTS) -> None:
    """The apologies' audio, once the greeting is out (so it never delays the greeting)."""
    await greeting.wait_for_playout()
    await prepare_apologies(tts)
