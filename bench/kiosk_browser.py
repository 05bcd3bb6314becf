"""Voice-to-voice as the kiosk's browser feels it, next to the Python kiosk's figure.

``python -m bench.kiosk_browser [--quick] [--turns N] [--agent echo|jarvis]`` (from the repo
root, after ``make setup``).

``--agent echo`` (isolates the browser): a real Chromium kiosk (the kiosk page, fake microphone looping a
French question) and a Python kiosk (livekit rtc, the same WAV) each talk to the same scripted echo agent on the local
LiveKit server: the agent answers with a fixed French sentence once it has heard
``STANDIN_EOT_SILENCE_MS`` of silence after speech. Both kiosks measure the same thing on
their own clock: from the end of their own speech (last captured sample above the speech
threshold) to the first received agent sample above it. The agent's fixed wait is the same
for both, so the difference is what the browser adds: its capture path (audio processing:
echo cancellation, noise suppression, auto gain), Opus, the receive jitter buffer and
playout, and the Web Audio meter's 20 ms sampling.

The speech models are not involved (the agent is scripted), so this isolates transport and
browser overhead; the voice loop's own stages are in ``bench.voice_loop``.

``--agent jarvis`` (default): the same comparison with the real voice loop, the JARVIS worker
with Kyutai STT/TTS engines on tiny random-weight checkpoints and the LLM stand-in answering a
short sentence. Both kiosks (the browser and ``jarvis_local.kiosk_sim.SimulatedKiosk``) speak the
same WAV question, the same number of times, after the same room for JARVIS's greeting and with
the same silence after each. Every utterance, the last one too, is counted by ``bench.turns``
(answered, late over 3 s, lost: no answer before the next utterance or within 10 s, junk
answers; percentiles null when nothing was answered), for both kiosks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from livekit import rtc

from bench.common import emit, progress
from bench.turns import Utterance, next_starts, summarize
from jarvis.migrate import migrate
from jarvis_local.browser import (
    ARTIFACTS,
    SAMPLE_RATE,
    agent_token,
    demo_server,
    ensure_kiosk_built,
    french_wav,
    kiosk_token,
    read_wav,
    run_scenario,
    session_for_page,
)
from jarvis_local.kiosk_sim import SimulatedKiosk, open_session, poll
from jarvis_local.llm_standin import LLMStandIn, Reply, Say
from jarvis_local.speech_models import tiny_models
from jarvis_local.stack import LocalStack, local_stack

DEMO_GYM_KEY = "demo-key-lyon-part-dieu"

SPEECH_RMS = 0.01  # float RMS on [-1, 1]; espeak speech is around 0.05-0.2, silence is 0
SEGMENT_GAP_MS = 800  # pauses shorter than this (a comma, a breath) stay inside one utterance
STANDIN_EOT_SILENCE_MS = 500
TURN_PERIOD_S = 7.0  # question WAV length with its padding (one turn per loop)
FRAME = SAMPLE_RATE // 100  # 10 ms


def rms(samples: np.ndarray) -> float:
    if samples.size == 0:
        return 0.0
    x = samples.astype(np.float32) / 32768.0
    return float(np.sqrt(np.mean(x * x)))


def utterances_from_levels(
    mic: list[tuple[float, float]], agent: list[tuple[float, float]], agent_threshold: float = SPEECH_RMS
) -> tuple[list[Utterance], list[float]]:
    """The member's utterances and the agent's speech onsets, in seconds, from level samples (ms).

    Every utterance counts, the last one too: bench.turns decides whether it was answered (the
    recording runs on long enough after it for an answer within LOST_AFTER_S to be seen)."""
    starts: list[float] = []
    ends: list[float] = []
    last_loud: float | None = None
    for t, level in mic:
        if level <= SPEECH_RMS:
            continue
        if last_loud is None or t - last_loud > SEGMENT_GAP_MS:
            if last_loud is not None:
                ends.append(last_loud)
            starts.append(t)
        last_loud = t
    if last_loud is not None:
        ends.append(last_loud)
    loud = [t for t, level in agent if level > agent_threshold]
    onsets = [t for i, t in enumerate(loud) if i == 0 or t - loud[i - 1] > SEGMENT_GAP_MS]
    onsets = [t for t in onsets if starts and t > starts[0]]  # the greeting answers no utterance
    utterances = [
        Utterance(
            voice_end=end / 1000,
            next_start=None if following is None else following / 1000,
            first_audio=next((t / 1000 for t in loud if t > end), None),
        )
        for end, following in zip(ends, next_starts(starts), strict=True)
    ]
    return utterances, [t / 1000 for t in onsets]


@dataclass
class EchoAgent:
    """Answers every utterance it hears with a fixed sentence, after a fixed silence."""

    stack: LocalStack
    room_name: str
    answer: np.ndarray
    room: rtc.Room = field(default_factory=rtc.Room)
    source: rtc.AudioSource | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    speaking: bool = False

    async def join(self) -> None:
        token = agent_token(self.stack, self.room_name, "agent-echo", "listening")

        def on_track(track: rtc.Track, _pub: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self.tasks.append(asyncio.create_task(self.listen(track)))

        self.room.on("track_subscribed", on_track)
        await self.room.connect(self.stack.livekit_url, token)
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self.source)
        await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )

    async def listen(self, track: rtc.Track) -> None:
        heard_speech = False
        silent_ms = 0.0
        async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
            frame = event.frame
            level = rms(np.frombuffer(frame.data, dtype=np.int16))
            if level > SPEECH_RMS:
                heard_speech, silent_ms = True, 0.0
                continue
            silent_ms += 1000 * frame.samples_per_channel / frame.sample_rate
            if heard_speech and silent_ms >= STANDIN_EOT_SILENCE_MS and not self.speaking:
                heard_speech = False
                self.tasks.append(asyncio.create_task(self.speak()))

    async def speak(self) -> None:
        assert self.source is not None
        self.speaking = True
        try:
            await self.room.local_participant.set_attributes({"lk.agent.state": "speaking"})
            for start in range(0, len(self.answer) - FRAME, FRAME):
                chunk = self.answer[start:start + FRAME]
                await self.source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
            await self.source.wait_for_playout()
            await self.room.local_participant.set_attributes({"lk.agent.state": "listening"})
        finally:
            self.speaking = False

    async def leave(self) -> None:
        for task in self.tasks:
            task.cancel()
        await self.room.disconnect()


async def python_kiosk(
    stack: LocalStack, question: np.ndarray, answer: np.ndarray, turns: int
) -> dict[str, Any]:
    """The Python kiosk: plays the question WAV in a loop, real-time paced, and listens."""
    room_name = f"bench-py-{uuid.uuid4().hex[:8]}"
    agent = EchoAgent(stack, room_name, answer)
    await agent.join()
    room = rtc.Room()
    mic: list[tuple[float, float]] = []
    heard: list[tuple[float, float]] = []

    async def receive(track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
            heard.append((1000 * time.monotonic(), rms(np.frombuffer(event.frame.data, dtype=np.int16))))

    receivers: list[asyncio.Task[None]] = []
    room.on(
        "track_subscribed",
        lambda track, _pub, _p: receivers.append(asyncio.create_task(receive(track)))
        if track.kind == rtc.TrackKind.KIND_AUDIO else None,
    )
    await room.connect(stack.livekit_url, kiosk_token(stack, room_name, identity="kiosk-python"))
    source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=100)
    await room.local_participant.publish_track(
        rtc.LocalAudioTrack.create_audio_track("kiosk-mic", source),
        rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE),
    )
    await asyncio.sleep(1.0)  # let the agent subscribe before the first word
    started = time.monotonic()
    frames = len(question) // FRAME
    for k in range(frames * turns):
        target = started + k * FRAME / SAMPLE_RATE
        delay = target - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        chunk = question[(k % frames) * FRAME:(k % frames + 1) * FRAME]
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, FRAME))
        mic.append((1000 * time.monotonic(), rms(chunk)))
    await asyncio.sleep(3.0)  # the last utterance's answer (the echo agent answers within 1 s)
    for task in receivers:
        task.cancel()
    await room.disconnect()
    await agent.leave()
    return summarize(*utterances_from_levels(mic, heard))


async def browser_kiosk(stack: LocalStack, wav: Path, answer: np.ndarray, turns: int) -> dict[str, Any]:
    """The kiosk page in Chromium, the fake microphone looping the question WAV."""
    room_name = f"bench-web-{uuid.uuid4().hex[:8]}"
    agent = EchoAgent(stack, room_name, answer)
    await agent.join()
    try:
        # The page is served by the demo server; its session route is answered by the scenario.
        with demo_server("http://127.0.0.1:9") as url:
            result = await run_scenario(
                {
                    "url": url,
                    "wav": str(wav),
                    "wavLoop": True,
                    "sessionOverride": session_for_page(stack, room_name),
                    "steps": [
                        {"click_badge": "LYON-0001"},
                        {"wait_state": ["listening", "speaking"]},
                        {"sleep": int(1000 * TURN_PERIOD_S * turns + 2000)},
                        {"collect_levels": True},
                        {"end": True},
                    ],
                },
                timeout_s=TURN_PERIOD_S * turns + 120,
            )
    finally:
        await agent.leave()
    if not result["ok"]:
        raise RuntimeError(f"browser scenario failed: {result.get('error')}")
    levels = result["levels"]
    _keep_levels(levels, "kiosk_browser_echo_levels.json")
    return summarize(*utterances_from_levels([(t, v) for t, v in levels["mic"]], [(t, v) for t, v in levels["agent"]]))


JARVIS_AGENT = "jarvis-kiosk-bench"
QUESTION = "Bonjour JARVIS, montre-moi un tutoriel pour le squat."
GREETING_ROOM_S = 9.0  # JARVIS's greeting (tiny TTS) is over before the browser's first question
# Silence after each question: room for the answer; after the last one, with the scenario's 2 s,
# bench.turns' 10 s within which an answer still counts.
JARVIS_TURN_GAP_S = 8.0
# The tiny TTS speaks noise; 0.006 float RMS is SimulatedKiosk's 200 int16 RMS.
JARVIS_AGENT_RMS = 200 / 32768


def short_answer(request: dict[str, Any]) -> Reply:
    """Every turn gets one short sentence: the bench times the loop, not the answer."""
    return Say("D'accord, c'est noté.")


@contextlib.asynccontextmanager
async def jarvis_services(stack: LocalStack, workdir: Path) -> AsyncIterator[str]:
    """Kyutai engines (tiny), the LLM stand-in and a JARVIS worker; yields the token service URL."""
    models = tiny_models(workdir / "tiny-speech")
    speech_env = await asyncio.to_thread(stack.start_speech_engines, models, 4)
    async with LLMStandIn(short_answer) as llm:
        env = {
            **speech_env,
            **llm.worker_env,
        }
        token_url = await asyncio.to_thread(stack.start_jarvis, JARVIS_AGENT, env, "agent-kiosk-bench")
        yield token_url


async def python_kiosk_jarvis(token_url: str, question: np.ndarray, turns: int) -> dict[str, Any]:
    """SimulatedKiosk on the browser's session shape: the same WAV question, the same number of
    times, after the same room for the greeting and with the same silence after each."""
    session = await open_session(token_url, DEMO_GYM_KEY, "LYON-0001")
    kiosk = SimulatedKiosk()
    await kiosk.join(session["livekit_url"], session["token"])
    starts: list[float] = []
    ends: list[float] = []
    try:
        if not await poll(kiosk.agent, 60):
            raise RuntimeError("JARVIS did not join the Python kiosk's room")
        next_at = time.perf_counter() + GREETING_ROOM_S
        for _ in range(turns):
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            starts.append(time.perf_counter())
            turn = await kiosk.say(question, QUESTION)
            ends.append(turn.voice_end)
            next_at = turn.voice_end + JARVIS_TURN_GAP_S
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()) + 2.0)
    finally:
        await kiosk.leave()
    loud = [t for t, level in kiosk.heard.frames if level >= 200]
    onsets = [t for i, t in enumerate(loud) if i == 0 or t - loud[i - 1] > SEGMENT_GAP_MS / 1000]
    onsets = [t for t in onsets if starts and t > starts[0]]  # the greeting answers no utterance
    utterances = [
        Utterance(voice_end=end, next_start=following, first_audio=kiosk.heard.first_speech_after(end))
        for end, following in zip(ends, next_starts(starts), strict=True)
    ]
    return summarize(utterances, onsets)


async def browser_kiosk_jarvis(token_url: str, question: np.ndarray, workdir: Path, turns: int) -> dict[str, Any]:
    """The kiosk page through the demo gym backend; the fake mic speaks after the greeting."""
    silence = np.zeros(int(SAMPLE_RATE * JARVIS_TURN_GAP_S), dtype=np.int16)
    speech = np.concatenate(
        [np.zeros(int(SAMPLE_RATE * GREETING_ROOM_S), dtype=np.int16)] + [np.concatenate([question, silence])] * turns
    )
    wav = workdir / "browser-turns.wav"
    _write_wav(wav, speech)
    with demo_server(token_url) as url:
        result = await run_scenario(
            {
                "url": url + "?agentTimeoutMs=60000",
                "wav": str(wav),
                "steps": [
                    {"click_badge": "LYON-0001"},
                    {"wait_agent_present": True, "timeoutMs": 60_000},
                    {"sleep": int(1000 * len(speech) / SAMPLE_RATE + 2000)},
                    {"collect_levels": True},
                    {"end": True},
                ],
            },
            timeout_s=len(speech) / SAMPLE_RATE + 150,
        )
    if not result["ok"]:
        raise RuntimeError(f"browser scenario failed: {result.get('error')}")
    levels = result["levels"]
    _keep_levels(levels, "kiosk_browser_jarvis_levels.json")
    return summarize(
        *utterances_from_levels(
            [(t, v) for t, v in levels["mic"]], [(t, v) for t, v in levels["agent"]], JARVIS_AGENT_RMS
        )
    )


def _keep_levels(levels: dict[str, Any], name: str) -> None:
    """The browser's level samples, for whoever wants to look at a run's turns again."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / name).write_text(json.dumps(levels))


def emit_comparison(
    web: dict[str, Any], py: dict[str, Any], *, quick: bool, weights: str, **extra: Any
) -> dict[str, Any]:
    """The browser's turns as the row, the Python kiosk's same utterances beside them; both
    counted by bench.turns (answered, late, lost, junk; null percentiles when nothing answered)."""
    progress(f"browser {web} / python {py}")
    both = web["v2v_ms_p50"] is not None and py["v2v_ms_p50"] is not None
    return emit(
        "kiosk_browser",
        weights=weights,
        quick=quick,
        results=[{"sessions": 1, **web}],
        **{f"python_kiosk_{key}": value for key, value in py.items()},
        browser_overhead_ms_p50=round(web["v2v_ms_p50"] - py["v2v_ms_p50"], 1) if both else None,
        **extra,
    )


async def run_jarvis(quick: bool, turns: int) -> dict[str, Any]:
    ensure_kiosk_built()
    with tempfile.TemporaryDirectory() as tmp, local_stack() as stack:
        await migrate(stack.pg_dsn, seed_demo=True)
        async with jarvis_services(stack, Path(tmp)) as token_url:
            # One WAV for both kiosks: the same sentence, samples and order.
            question = read_wav(french_wav(Path(tmp) / "q.wav", QUESTION, lead_silence_s=0.0, tail_silence_s=0.0))
            progress(f"python kiosk (SimulatedKiosk): {turns} turns with JARVIS")
            py = await python_kiosk_jarvis(token_url, question, turns)
            progress(f"browser kiosk: {turns} turns with JARVIS")
            web = await browser_kiosk_jarvis(token_url, question, Path(tmp), turns)
    return emit_comparison(web, py, quick=quick, weights="tiny",
                           agent="jarvis worker, Kyutai STT/TTS tiny weights, LLM stand-in")


async def main(quick: bool, turns: int) -> dict[str, Any]:
    ensure_kiosk_built()
    with tempfile.TemporaryDirectory() as tmp:
        question_wav = french_wav(
            Path(tmp) / "question.wav", "Bonjour JARVIS, montre-moi un tutoriel pour le squat.",
            lead_silence_s=0.5, tail_silence_s=TURN_PERIOD_S,
        )
        question = read_wav(question_wav)
        # Trim the padding so one loop of the WAV lasts TURN_PERIOD_S.
        question = question[: int(TURN_PERIOD_S * SAMPLE_RATE)]
        trimmed = Path(tmp) / "question-loop.wav"
        _write_wav(trimmed, question)
        answer = read_wav(french_wav(Path(tmp) / "answer.wav", "Voici le tutoriel du squat.", 0.0, 0.1))
        with local_stack() as stack:
            await migrate(stack.pg_dsn, seed_demo=True)
            progress(f"python kiosk: {turns} turns")
            py = await python_kiosk(stack, question, answer, turns)
            progress(f"browser kiosk: {turns} turns")
            web = await browser_kiosk(stack, trimmed, answer, turns)
    return emit_comparison(web, py, quick=quick, weights="none",
                           agent="scripted echo agent (no speech models)", agent_wait_ms=STANDIN_EOT_SILENCE_MS)


def _write_wav(path: Path, samples: np.ndarray) -> None:
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(samples.tobytes())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 turns instead of 10")
    parser.add_argument("--turns", type=int, default=None)
    parser.add_argument("--agent", choices=["echo", "jarvis"], default="jarvis",
                        help="jarvis: the real voice loop (tiny weights); echo: a scripted agent, to isolate "
                        "the browser's own cost (transport only)")
    args = parser.parse_args()
    turns = args.turns or (4 if args.quick else 10)
    asyncio.run(main(args.quick, turns) if args.agent == "echo" else run_jarvis(args.quick, turns))
