"""A simulated kiosk: the ``livekit`` Python SDK as the member's microphone and speaker.

Also what a test or bench needs to play the gym backend: open a session at the token service,
wait for the agent, list the rooms.

It joins the room with the token the gym backend got, keeps its microphone open (silence
between sentences, as a real kiosk does), plays sentences into it in real time, records what
the agent says, and measures each turn's voice-to-voice latency: from the last voiced sample
the kiosk sent to the first agent audio sample it received.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shutil
import subprocess
import tempfile
import time
import wave
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import httpx
import numpy as np
from livekit import api, rtc

from jarvis.session_contract import ATTR_READY
from jarvis_local.stack import LocalStack

# livekit-agents' ATTRIBUTE_AGENT_STATE (not imported: a kiosk process need not load the agents framework)
ATTR_AGENT_STATE = "lk.agent.state"

SAMPLE_RATE = 48_000
FRAME_MS = 10
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000
# Received audio counts as speech above this RMS (int16 units): well above codec noise.
SPEECH_RMS = 200.0

T = TypeVar("T")


class SessionRefused(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"token service answered {status}: {body}")
        self.status = status


async def open_session(
    token_service_url: str, gym_key: str, badge_id: str, kiosk_id: str = "accueil-1", timeout_s: float = 30.0
) -> dict[str, Any]:
    """What the gym's backend does when a badge is scanned: ``POST /v1/sessions``; its JSON answer."""
    async with httpx.AsyncClient(timeout=timeout_s) as http:
        r = await http.post(
            f"{token_service_url}/v1/sessions",
            json={"badge_id": badge_id, "kiosk_id": kiosk_id},
            headers={"Authorization": f"Bearer {gym_key}"},
        )
    if r.status_code != 201:
        raise SessionRefused(r.status_code, r.text)
    session: dict[str, Any] = r.json()
    return session


@overload
async def poll(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float = ..., *, every_s: float = ..., what: str
) -> T: ...
@overload
async def poll(
    probe: Callable[[], Awaitable[T | None]], timeout_s: float = ..., *, every_s: float = ..., what: None = None
) -> T | None: ...
@overload
async def poll(probe: Callable[[], T | None], timeout_s: float = ..., *, every_s: float = ..., what: str) -> T: ...
@overload
async def poll(
    probe: Callable[[], T | None], timeout_s: float = ..., *, every_s: float = ..., what: None = None
) -> T | None: ...
async def poll(
    probe: Callable[[], Any], timeout_s: float = 30.0, *, every_s: float = 0.02, what: str | None = None
) -> Any:
    """Calls ``probe`` (plain or async) until it returns something truthy, and returns that. At the
    deadline: None, or, when ``what`` names the wait, an AssertionError saying so (what a test wants)."""
    deadline = time.perf_counter() + timeout_s
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.perf_counter() >= deadline:
            if what is not None:
                raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            return None
        await asyncio.sleep(every_s)


def agent_participant(room: rtc.Room, attribute: str = ATTR_READY) -> rtc.RemoteParticipant | None:
    for p in room.remote_participants.values():
        if p.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT and p.attributes.get(attribute):
            return p
    return None


async def joined_with_jarvis(
    session: Mapping[str, Any], timeout_s: float = 60.0
) -> tuple[rtc.Room, rtc.RemoteParticipant]:
    """A bare kiosk connection (no microphone) in the session's room, once JARVIS is there and ready."""
    room = rtc.Room()
    await room.connect(session["livekit_url"], session["token"])
    agent = await poll(lambda: agent_participant(room), timeout_s, what="JARVIS to join and be ready")
    return room, agent


async def room_names(stack: LocalStack) -> set[str]:
    lk = api.LiveKitAPI(stack.livekit_url.replace("ws://", "http://"), stack.livekit_api_key, stack.livekit_api_secret)
    try:
        rooms = await lk.room.list_rooms(api.ListRoomsRequest())
        return {r.name for r in rooms.rooms}
    finally:
        await lk.aclose()


def synthesize_french(text: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A French sentence spoken by espeak-ng, as int16 mono at ``sample_rate``."""
    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is not installed: run `make setup`")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "fr", "-s", "165", "-w", str(raw), text], check=True,
                       capture_output=True)
        with wave.open(str(raw)) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
    return resample_int16(pcm, rate, sample_rate)


def resample_int16(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return pcm.astype(np.int16)
    duration = len(pcm) / from_rate
    t_out = np.arange(int(duration * to_rate)) / to_rate
    t_in = np.arange(len(pcm)) / from_rate
    return np.interp(t_out, t_in, pcm.astype(np.float32)).astype(np.int16)


def rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(samples.astype(np.float32))))) if samples.size else 0.0


@dataclass
class Turn:
    text: str
    voice_end: float  # wall clock (perf_counter) of the last voiced sample sent
    first_answer: float | None = None  # first agent speech sample received after voice_end

    @property
    def v2v_ms(self) -> float | None:
        return None if self.first_answer is None else 1000 * (self.first_answer - self.voice_end)


@dataclass
class AgentAudioLog:
    """When the agent's voice was heard: (perf_counter at frame arrival, rms) per 10 ms frame."""

    frames: list[tuple[float, float]] = field(default_factory=list)

    def first_speech_after(self, t: float) -> float | None:
        for at, level in self.frames:
            if at > t and level >= SPEECH_RMS:
                # the frame arrived at `at`; its first sample was 10 ms earlier in the stream
                return at - FRAME_MS / 1000
        return None

    def last_speech_after(self, t: float) -> float | None:
        last = None
        for at, level in self.frames:
            if at > t and level >= SPEECH_RMS:
                last = at
        return last

    def speaking_at(self, t: float, window_s: float = 0.1) -> bool:
        return any(t - window_s <= at <= t and level >= SPEECH_RMS for at, level in self.frames)

    def stopped_after(self, t: float, quiet_s: float = 0.25) -> float | None:
        """When the agent's voice stopped after ``t``: the last speech frame before ``quiet_s`` of quiet."""
        last = t
        for at, level in self.frames:
            if at <= t or level < SPEECH_RMS:
                continue
            if at - last >= quiet_s:
                return last
            last = at
        now = self.frames[-1][0] if self.frames else t
        return last if now - last >= quiet_s else None

    def speech_seconds(self) -> float:
        return sum(FRAME_MS / 1000 for _at, level in self.frames if level >= SPEECH_RMS)


def transcript_kind(
    attributes: Mapping[str, str], sender: str, my_identity: str, my_track_sids: Iterable[str]
) -> Literal["agent", "member_final", "member_interim"]:
    """What a `lk.transcription` text stream is: JARVIS's words, or the STT's of the member's.

    The member's own words come back attributed to the kiosk (the STT transcribing its track).
    The STT's interim guesses arrive as streams of their own; only its finals are what the
    member said (`make demo` once printed every interim as if the member had said it)."""
    transcribed = attributes.get("lk.transcribed_track_id") or ""
    if transcribed not in set(my_track_sids) and sender != my_identity:
        return "agent"
    return "member_final" if attributes.get("lk.transcription_final") == "true" else "member_interim"


class BargeInDuck:
    """The browser kiosk's barge-in duck (kiosk/src/duck.ts), same rule and numbers: JARVIS's voice
    ducks once the member's microphone has carried sound for two 10 ms frames, and comes back after
    ``hold_s`` of quiet. The agent's own pause and stop come later, over the network."""

    def __init__(self, threshold_db: float = -40.0, onset_s: float = 0.01, hold_s: float = 0.4,
                 gain: float = 0.1) -> None:
        self.threshold_db, self.onset_s, self.hold_s, self.gain = threshold_db, onset_s, hold_s, gain
        self.ducked = False
        self.changes: list[tuple[float, bool]] = []  # (perf_counter, ducked)
        self._sound_since: float | None = None
        self._last_sound = -np.inf

    def feed(self, level_db: float, at: float) -> None:
        if level_db >= self.threshold_db:
            if self._sound_since is None:
                self._sound_since = at
            self._last_sound = at
            if not self.ducked and at - self._sound_since >= self.onset_s - 1e-9:
                self._set(True, at)
            return
        self._sound_since = None
        if self.ducked and at - self._last_sound >= self.hold_s:
            self._set(False, at)

    def _set(self, ducked: bool, at: float) -> None:
        self.ducked = ducked
        self.changes.append((at, ducked))


def level_dbfs(samples: np.ndarray) -> float:
    level = rms(samples) / 32768.0
    return 20 * float(np.log10(level)) if level > 0 else -np.inf


class SimulatedKiosk:
    def __init__(self) -> None:
        self.room = rtc.Room()
        # A short queue makes capture_frame pace us in real time, as a microphone would. A sample
        # leaves it `mic.queued_duration` seconds (livekit-rtc's unit) after it was queued.
        self.mic = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=40)
        # What JARVIS sent; a real kiosk's speaker plays it at `duck.gain` while `duck.ducked`.
        self.heard = AgentAudioLog()
        self.duck = BargeInDuck()
        self._speech: asyncio.Queue[np.ndarray] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._voice_end: asyncio.Future[float] | None = None
        self._voice_start: asyncio.Future[float] | None = None
        # What JARVIS said (its transcriptions), the STT's finals of what the member said, and the videos
        # JARVIS asked the kiosk to show.
        self.transcripts: list[tuple[float, str]] = []
        self.member_transcripts: list[tuple[float, str]] = []
        self.videos: list[dict[str, str]] = []
        # JARVIS's state as its participant attribute announced it, with when it reached us.
        self.agent_states: list[tuple[float, str]] = []

    async def join(self, livekit_url: str, token: str) -> None:
        self.room.on("track_subscribed", self._on_track)
        self.room.on("participant_attributes_changed", self._on_attributes)
        self.room.register_text_stream_handler("lk.transcription", self._on_transcription)
        await self.room.connect(livekit_url, token)
        self.room.local_participant.register_rpc_method("kiosk.show_video", self._show_video)
        track = rtc.LocalAudioTrack.create_audio_track("microphone", self.mic)
        options = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self.room.local_participant.publish_track(track, options)
        self._tasks.append(asyncio.create_task(self._microphone()))

    def _on_track(self, track: rtc.Track, _pub: rtc.RemoteTrackPublication, participant: rtc.RemoteParticipant) -> None:
        if track.kind == rtc.TrackKind.KIND_AUDIO and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self._tasks.append(asyncio.create_task(self._listen(track)))

    def _on_attributes(self, changed: dict[str, str], participant: rtc.Participant) -> None:
        if ATTR_AGENT_STATE in changed and participant.kind == rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            self.agent_states.append((time.perf_counter(), changed[ATTR_AGENT_STATE]))

    def finished_speaking(self, since: float, quiet_s: float = 0.6) -> float | None:
        """When what JARVIS began saying after ``since`` ended (its last voiced frame), or None yet.

        Quiet alone is not the end: on a busy machine its audio may pause mid-sentence for longer
        than a member's pause. It is over once JARVIS has said it is "listening" again after
        "speaking", and its audio has been quiet ``quiet_s`` since."""
        speaking = next((at for at, state in self.agent_states if at >= since and state == "speaking"), None)
        if speaking is None or not any(at > speaking and state == "listening" for at, state in self.agent_states):
            return None
        last = self.heard.last_speech_after(since)
        if last is None or time.perf_counter() - last < quiet_s:
            return None
        return last

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        kind = transcript_kind(
            reader.info.attributes or {}, identity, self.room.local_participant.identity, self._my_track_sids()
        )
        if kind == "member_interim":
            return
        target = self.member_transcripts if kind == "member_final" else self.transcripts

        async def read() -> None:
            text = await reader.read_all()
            if text.strip():
                target.append((time.perf_counter(), text))

        self._tasks.append(asyncio.create_task(read()))

    def _my_track_sids(self) -> set[str]:
        return set(self.room.local_participant.track_publications)

    async def _show_video(self, data: rtc.RpcInvocationData) -> str:
        payload = json.loads(data.payload)
        self.videos.append(payload)
        return json.dumps({"status": "shown"})

    async def send_chat(self, text: str) -> float:
        """Type a message, as the kiosk's text input does; returns when it was sent."""
        await self.room.local_participant.send_text(text, topic="lk.chat")
        return time.perf_counter()

    def agent(self) -> rtc.RemoteParticipant | None:
        """The JARVIS participant, once it holds the member's context."""
        return agent_participant(self.room)

    async def _listen(self, track: rtc.Track) -> None:
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        async for event in stream:
            samples = np.frombuffer(event.frame.data, dtype=np.int16)
            self.heard.frames.append((time.perf_counter(), rms(samples)))

    async def _microphone(self) -> None:
        silence = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        while True:
            try:
                sentence = self._speech.get_nowait()
            except asyncio.QueueEmpty:
                await self._send(silence)
                continue
            if self._voice_start is not None and not self._voice_start.done():
                self._voice_start.set_result(time.perf_counter() + self.mic.queued_duration)
            for start in range(0, len(sentence), FRAME_SAMPLES):
                chunk = sentence[start:start + FRAME_SAMPLES]
                if len(chunk) < FRAME_SAMPLES:
                    chunk = np.pad(chunk, (0, FRAME_SAMPLES - len(chunk)))
                await self._send(chunk)
            # the last sample leaves once what is still queued has played out
            done = time.perf_counter() + self.mic.queued_duration
            if self._voice_end is not None and not self._voice_end.done():
                self._voice_end.set_result(done)

    async def _send(self, samples: np.ndarray) -> None:
        frame = rtc.AudioFrame(samples.tobytes(), SAMPLE_RATE, 1, len(samples))
        await self.mic.capture_frame(frame)
        # the frame is heard by the microphone as it leaves the queue, not when it was queued
        self.duck.feed(level_dbfs(samples), time.perf_counter() + self.mic.queued_duration)

    async def start_saying(self, pcm: np.ndarray) -> float:
        """Start speaking ``pcm`` without waiting for its end; returns when its first sample left."""
        started = asyncio.get_running_loop().create_future()
        self._voice_start = started
        self._voice_end = asyncio.get_running_loop().create_future()
        await self._speech.put(_trim_trailing_silence(pcm))
        return await started

    async def say(self, pcm: np.ndarray, text: str = "") -> Turn:
        """Speak ``pcm`` (int16 mono 48 kHz); returns once its last sample was sent."""
        trimmed = _trim_trailing_silence(pcm)
        self._voice_end = asyncio.get_running_loop().create_future()
        await self._speech.put(trimmed)
        return Turn(text=text, voice_end=await self._voice_end)

    async def hear_answer(self, turn: Turn, timeout_s: float = 30.0) -> Turn:
        turn.first_answer = await poll(lambda: self.heard.first_speech_after(turn.voice_end), timeout_s, every_s=0.01)
        return turn

    async def leave(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self.room.disconnect()
        await self.mic.aclose()


def _trim_trailing_silence(pcm: np.ndarray, level: float = 300.0) -> np.ndarray:
    # "Last voiced sample" must be the last sample with voice in it, not espeak's tail.
    voiced = np.nonzero(np.abs(pcm.astype(np.int32)) > level)[0]
    return pcm[: voiced[-1] + 1] if voiced.size else pcm
