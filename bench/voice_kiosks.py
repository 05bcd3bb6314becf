"""The load generator of ``bench.voice_loop``: simulated kiosks, a few per process of their own.

Each kiosk process runs its own event loop, so the clock that times a turn is never the loaded
loop of the bench's parent (which samples CPU and waits on the worker). Every time here is the
kiosk process's wall clock (``time.time()``), taken when audio is sent or received, so the
parent can match a turn with the agent's own per-turn record (``jarvis.turn_metrics``, also
``time.time()`` on the same host).

The parent drives a process through a pipe in three steps: the process opens its visits (badge
in, join, hear the greeting) and sends ``("opened", [VisitRecord])``; on ``"talk"`` its kiosks
speak and it sends ``("talked", [VisitRecord])``; on ``"leave"`` they leave and it sends
``("left", None)``. In a soak (``soak_until`` set) each kiosk visits again and again until then
and the records of every visit come back with ``"talked"``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import httpx
import numpy as np
from livekit import rtc

from agent.metrics import TURN_METRICS_TOPIC
from jarvis.audio_stats import room_audio_jitter
from jarvis_local.kiosk_sim import FRAME_MS, SPEECH_RMS, SessionRefused, SimulatedKiosk, open_session, poll

# The agent is done talking once it has been silent this long.
QUIET_S = 1.0
# Agent speech after this much silence is a new onset (an answer, or speech answering nothing).
ONSET_GAP_S = 1.5
# The answer to an utterance begins after at least this much agent silence: speech running on
# over the member's last word is the end of something said before, not the answer.
ANSWER_GAP_S = 0.25
# Members at different kiosks do not talk in step. With these (``bench.overload``'s) each kiosk's
# first sentence comes at a random moment within about one turn's cycle (a sentence, JARVIS's
# answer, a pause: ~11 s with the stand-in LLM), and a member pauses 0.3-2.5 s before speaking
# again, so two kiosks' turns end together as often as chance has them. With VisitSpec's defaults
# (``bench.voice_loop``'s, kept so its figures compare with earlier ones) every kiosk begins at
# once and pauses 0.3-0.8 s: a run keeps the phase its kiosks drift into. Two overload runs that
# way: kiosks that stayed in step (turns ending within ~1 s of each other's) measured a full-level
# p95 1.47 times the half level's; kiosks that drifted apart 1.06.
INDEPENDENT_FIRST_TURN_SPREAD_S = 11.0
INDEPENDENT_PAUSE_S = (0.3, 2.5)
PAUSE_S = (0.3, 0.8)


@dataclass
class VisitSpec:
    index: int
    token_url: str
    gym_key: str
    badge: str
    answer_timeout_s: float
    join_timeout_s: float
    first_turn_spread_s: float = 0.0  # the first sentence waits a random 0..this
    pause_s: tuple[float, float] = PAUSE_S  # between an answer and the next sentence


@dataclass
class VisitRecord:
    """What one kiosk session measured; every time is the kiosk process's ``time.time()``."""

    index: int
    session_id: str | None = None
    ready: bool = False
    greeted: bool = False
    error: str | None = None
    # Per utterance: started, voice_end, first_audio (None: none heard), member_final (None),
    # overlapped (agent speech heard while the member was still talking).
    utterances: list[dict[str, Any]] = field(default_factory=list)
    # Agent speech onsets (after ONSET_GAP_S of silence) once the kiosk began talking.
    onsets: list[float] = field(default_factory=list)
    # The agent's per-turn records received on jarvis.turn_metrics.
    agent_turns: list[dict[str, Any]] = field(default_factory=list)
    # Final transcripts of the member's track while no utterance was waiting for its answer.
    junk_transcripts: int = 0
    # The kiosk's jitter buffer for JARVIS's audio over the visit (jarvis.audio_stats.JitterBuffer).
    answer_audio_jitter: list[dict[str, Any]] = field(default_factory=list)


class BenchKiosk(SimulatedKiosk):
    """A simulated kiosk that also notes the member's final transcripts and the agent's turn records."""

    def __init__(self) -> None:
        super().__init__()
        # SimulatedKiosk stamps with perf_counter; one offset per process turns that into wall time.
        self.wall_offset = time.time() - time.perf_counter()
        self.member_finals: list[float] = []
        self.agent_turns: list[dict[str, Any]] = []
        self.room.on("data_received", self._on_data)

    def wall(self, perf: float) -> float:
        return perf + self.wall_offset

    def _on_data(self, packet: rtc.DataPacket) -> None:
        if packet.topic != TURN_METRICS_TOPIC:
            return
        with contextlib.suppress(ValueError):
            self.agent_turns.append(json.loads(packet.data))

    def _on_transcription(self, reader: rtc.TextStreamReader, identity: str) -> None:
        # The agent publishes the member's transcript under the member's (the kiosk's) identity.
        if identity != self.room.local_participant.identity:
            super()._on_transcription(reader, identity)
            return

        async def read() -> None:
            text = await reader.read_all()
            if (reader.info.attributes or {}).get("lk.transcription_final") == "true" and text.strip():
                self.member_finals.append(time.time())

        self._tasks.append(asyncio.create_task(read()))

    def answer_onset_after(self, t: float) -> float | None:
        """The first agent speech after ``t`` (perf clock) that follows ANSWER_GAP_S of silence."""
        frames = self.heard.frames
        last_speech: float | None = None
        # Speech more than ANSWER_GAP_S before t cannot matter: start there, not at the beginning.
        for at, level in frames[bisect.bisect_left(frames, t - ANSWER_GAP_S, key=lambda f: f[0]):]:
            if level < SPEECH_RMS:
                continue
            if at > t and (last_speech is None or at - last_speech >= ANSWER_GAP_S):
                return at - FRAME_MS / 1000  # the frame arrived at `at`; its first sample was earlier
            last_speech = at
        return None

    def spoke_between(self, a: float, b: float) -> bool:
        return any(a <= at <= b and level >= SPEECH_RMS for at, level in self.heard.frames)

    def quiet_for(self, seconds: float) -> bool:
        """No agent speech in the last ``seconds`` (only the newest frames are looked at)."""
        since = time.perf_counter() - seconds
        for at, level in reversed(self.heard.frames):
            if at < since:
                break
            if level >= SPEECH_RMS:
                return False
        return True

    def speech_onsets(self, gap_s: float, after: float) -> list[float]:
        """Times (perf clock) the agent started talking after ``gap_s`` of silence, from ``after`` on."""
        onsets: list[float] = []
        last: float | None = None
        for at, level in self.heard.frames:
            if level < SPEECH_RMS:
                continue
            if (last is None or at - last >= gap_s) and at - FRAME_MS / 1000 >= after:
                onsets.append(at - FRAME_MS / 1000)
            last = at
        return onsets


class Visit:
    """One kiosk session: badge in, join, hear the greeting, talk, leave."""

    def __init__(self, spec: VisitSpec) -> None:
        self.spec = spec
        self.kiosk = BenchKiosk()
        self.record = VisitRecord(spec.index)
        self._talk_began: float | None = None
        # (sentence start, answer heard or given up) per turn, perf clock: member finals outside
        # these windows are the STT hearing silence.
        self._windows: list[tuple[float, float]] = []

    async def open(self) -> None:
        spec, rec = self.spec, self.record
        try:
            try:
                session = await open_session(spec.token_url, spec.gym_key, spec.badge, f"bench-{spec.index}")
            except SessionRefused as exc:
                rec.error = f"token service answered {exc.status}"
                return
            rec.session_id = session["session_id"]
            await self.kiosk.join(session["livekit_url"], session["token"])
            if await poll(self.kiosk.agent, spec.join_timeout_s, every_s=0.1) is None:
                rec.error = f"JARVIS not in the room within {spec.join_timeout_s:.0f} s"
                return
            rec.ready = True
            began = time.perf_counter()
            rec.greeted = bool(await poll(lambda: self.kiosk.answer_onset_after(began - 5), 20.0))
            await poll(lambda: self.kiosk.quiet_for(QUIET_S), 20.0)
        except (httpx.HTTPError, rtc.ConnectError, OSError) as exc:
            rec.error = f"{type(exc).__name__}: {exc}"

    async def talk(self, sentences: list[tuple[str, np.ndarray]], turns: int) -> None:
        if not self.record.ready:
            return
        kiosk = self.kiosk
        self._talk_began = time.perf_counter()
        await asyncio.sleep(random.uniform(0.0, self.spec.first_turn_spread_s))
        for n in range(turns):
            # Anything the agent is still saying (a long answer, an answer to junk) ends first.
            await poll(lambda: kiosk.quiet_for(QUIET_S), 20.0)
            text, pcm = sentences[(self.spec.index + n) % len(sentences)]
            started = time.perf_counter()
            turn = await kiosk.say(pcm, text)
            overlapped = kiosk.spoke_between(started, turn.voice_end)
            voice_end = turn.voice_end
            first = await poll(lambda: kiosk.answer_onset_after(voice_end), self.spec.answer_timeout_s)  # noqa: B023
            voice_end_wall = kiosk.wall(turn.voice_end)
            self.record.utterances.append({
                "started": kiosk.wall(started),
                "voice_end": voice_end_wall,
                "first_audio": None if first is None else kiosk.wall(first),
                "member_final": next((t for t in kiosk.member_finals if t > voice_end_wall), None),
                "overlapped": overlapped,
            })
            self._windows.append((kiosk.wall(started), kiosk.wall(first or time.perf_counter()) + 2.0))
            # A member pauses a moment before speaking again.
            await asyncio.sleep(random.uniform(*self.spec.pause_s))
        await poll(lambda: kiosk.quiet_for(QUIET_S), 20.0)

    async def finish_record(self) -> VisitRecord:
        """The record, with what is only known once the talking is over."""
        rec = self.record
        rec.answer_audio_jitter = [j.as_dict() for j in await room_audio_jitter(self.kiosk.room)]
        # A final arriving before the next utterance began still belongs to the previous one.
        for u, nxt in zip(rec.utterances, rec.utterances[1:], strict=False):
            if u["member_final"] is not None and u["member_final"] >= nxt["started"]:
                u["member_final"] = None
        if self._talk_began is not None:
            began = self.kiosk.wall(self._talk_began)
            rec.onsets = [self.kiosk.wall(t) for t in self.kiosk.speech_onsets(ONSET_GAP_S, self._talk_began)]
            rec.junk_transcripts = sum(
                1 for t in self.kiosk.member_finals
                if t >= began and not any(a <= t <= b for a, b in self._windows)
            )
        rec.agent_turns = list(self.kiosk.agent_turns)
        return rec

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.kiosk.leave()


async def _run(conn: Connection, specs: list[VisitSpec], sentences: list[tuple[str, np.ndarray]], turns: int,
               soak_until: float | None) -> None:
    async def recv() -> Any:
        return await asyncio.to_thread(conn.recv)

    if soak_until is not None:
        records: list[VisitRecord] = []

        async def kiosk_loop(spec: VisitSpec) -> None:
            while time.time() < soak_until:
                visit = Visit(spec)
                await visit.open()
                await visit.talk(sentences, turns)
                records.append(await visit.finish_record())
                await visit.close()
                if not visit.record.ready:
                    await asyncio.sleep(5)  # do not hammer a worker that cannot take the session

        conn.send(("opened", []))
        await recv()
        await asyncio.gather(*(kiosk_loop(s) for s in specs))
        conn.send(("talked", [asdict(r) for r in records]))
        await recv()
        conn.send(("left", None))
        return

    visits = [Visit(s) for s in specs]
    await asyncio.gather(*(v.open() for v in visits))
    conn.send(("opened", [asdict(v.record) for v in visits]))
    await recv()
    await asyncio.gather(*(v.talk(sentences, turns) for v in visits))
    finished = await asyncio.gather(*(v.finish_record() for v in visits))
    conn.send(("talked", [asdict(r) for r in finished]))
    await recv()
    await asyncio.gather(*(v.close() for v in visits))
    conn.send(("left", None))


def kiosk_process(conn: Connection, specs: list[VisitSpec], sentences: list[tuple[str, np.ndarray]], turns: int,
                  soak_until: float | None = None) -> None:
    """A kiosk process's entry point (multiprocessing, spawn)."""
    try:
        asyncio.run(_run(conn, specs, sentences, turns, soak_until))
    finally:
        conn.close()
