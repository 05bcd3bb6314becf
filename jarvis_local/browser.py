"""What the browser tests and bench need besides the stack: the kiosk build, the demo gym backend,
a French WAV for the fake microphone, a scripted stand-in agent, and the node runner that
plays a scenario in Debian's Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from aiohttp import WSMsgType, web
from livekit import api, rtc

from jarvis_local.kiosk_page import kiosk_page
from jarvis_local.stack import LocalStack

REPO = Path(__file__).resolve().parents[1]
KIOSK = REPO / "kiosk"
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = REPO / "test-artifacts" / "browser"
SAMPLE_RATE = 48_000


def ensure_kiosk_built() -> None:
    """The page and the library must be built (``make setup`` does it); rebuild if stale."""
    if not (KIOSK / "node_modules" / "playwright-core").exists():
        raise RuntimeError("kiosk npm packages missing: run `make setup` (npm ci in kiosk/)")
    subprocess.run(["npm", "run", "--silent", "build"], cwd=KIOSK, check=True, capture_output=True, timeout=240)


def demo_server(token_service_url: str, **env: str) -> contextlib.AbstractContextManager[str]:
    """The demo gym backend (kiosk/server/demo-server.mjs) on a free port; yields its URL.
    ``env``: its other settings, e.g. JARVIS_DEMO_KIOSK_ID or a LegacyProviderStandIn's env."""
    return kiosk_page(token_service_url, extra_env=env)


def french_wav(path: Path, text: str, lead_silence_s: float = 1.0, tail_silence_s: float = 4.0) -> Path:
    """A French sentence spoken by espeak-ng, 48 kHz mono 16-bit, padded with silence."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", "fr", "-s", "150", "-w", str(raw), text], check=True, capture_output=True)
        subprocess.run(
            ["sox", str(raw), "-r", str(SAMPLE_RATE), "-c", "1", "-b", "16", str(path),
             "pad", str(lead_silence_s), str(tail_silence_s)],
            check=True, capture_output=True,
        )
    return path


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path), "rb") as w:
        assert w.getframerate() == SAMPLE_RATE and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)


def kiosk_token(stack: LocalStack, room: str, identity: str = "kiosk-accueil-1", ttl_s: int = 600) -> str:
    return (
        api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret)
        .with_identity(identity)
        .with_ttl(timedelta(seconds=ttl_s))
        .with_grants(api.VideoGrants(room_join=True, room=room))
        .to_jwt()
    )


def agent_token(stack: LocalStack, room: str, identity: str, state: str) -> str:
    """A token for a scripted participant that kiosks take for the agent (kind agent, lk.agent.state)."""
    return (
        api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret)
        .with_identity(identity)
        .with_kind("agent")
        .with_attributes({"lk.agent.state": state})
        .with_grants(api.VideoGrants(room_join=True, room=room, can_update_own_metadata=True))
        .to_jwt()
    )


def session_for_page(stack: LocalStack, room: str, token: str | None = None) -> dict[str, Any]:
    """What /api/kiosk-session would answer, for a room the test controls (no dispatch)."""
    return {
        "status": 201,
        "body": {
            "session_id": room,
            "livekit_url": stack.livekit_url,
            "token": token or kiosk_token(stack, room),
            "expires_at": "2099-01-01T00:00:00Z",
            "member_first_name": "Camille",
        },
    }


async def run_scenario(config: dict[str, Any], timeout_s: float = 120) -> dict[str, Any]:
    """Plays one scenario in Chromium (kiosk/browser/scenario.mjs); returns its JSON result."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    config = {"artifactsDir": str(ARTIFACTS), "chromium": str(CHROMIUM), **config}
    proc = await asyncio.create_subprocess_exec(
        "node", str(KIOSK / "browser" / "scenario.mjs"), json.dumps(config),
        cwd=KIOSK, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    lines = out.decode().strip().splitlines()
    if not lines:
        raise AssertionError(f"scenario printed nothing; stderr:\n{err.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = err.decode()[-2000:]
    return result


@dataclass
class StandInAgent:
    """A scripted participant that speaks LiveKit Agents' protocol to the kiosk: the
    ``lk.agent.state`` attribute, an audio track, ``lk.transcription`` text streams,
    ``lk.chat`` from the member, and the ``kiosk.show_video`` RPC. It lets the browser
    tests prove the kiosk's side without depending on the speech models."""

    stack: LocalStack
    room_name: str
    greeting_wav: Path
    room: rtc.Room = field(default_factory=rtc.Room)
    chats: list[str] = field(default_factory=list)
    chat_received: asyncio.Event = field(default_factory=asyncio.Event)
    source: rtc.AudioSource | None = None
    track_sid: str = ""
    heard_peak_rms: float = 0.0  # the loudest 10 ms of the kiosk's microphone received
    muted_tracks: list[str] = field(default_factory=list)
    listeners: list[asyncio.Task[None]] = field(default_factory=list)

    async def join(self) -> None:
        token = agent_token(self.stack, self.room_name, "agent-standin", "initializing")

        def on_chat(reader: rtc.TextStreamReader, _identity: str) -> None:
            async def read() -> None:
                self.chats.append(await reader.read_all())
                self.chat_received.set()

            asyncio.ensure_future(read())  # noqa: RUF006 - lives as long as the room

        def on_track(track: rtc.Track, _pub: rtc.RemoteTrackPublication, _p: rtc.RemoteParticipant) -> None:
            if track.kind == rtc.TrackKind.KIND_AUDIO:
                self.listeners.append(asyncio.ensure_future(self._listen(track)))

        self.room.register_text_stream_handler("lk.chat", on_chat)
        self.room.on("track_subscribed", on_track)
        self.room.on("track_muted", lambda pub, _participant: self.muted_tracks.append(pub.sid))
        await self.room.connect(self.stack.livekit_url, token)
        self.source = rtc.AudioSource(SAMPLE_RATE, 1)
        track = rtc.LocalAudioTrack.create_audio_track("agent-voice", self.source)
        publication = await self.room.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        self.track_sid = publication.sid

    async def _listen(self, track: rtc.Track) -> None:
        async for event in rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1):
            samples = np.frombuffer(event.frame.data, dtype=np.int16).astype(np.float32) / 32768.0
            if samples.size:
                self.heard_peak_rms = max(self.heard_peak_rms, float(np.sqrt(np.mean(samples * samples))))

    async def kiosk_identity(self, timeout_s: float = 60) -> str:
        for _ in range(int(timeout_s * 20)):
            for participant in self.room.remote_participants.values():
                return participant.identity
            await asyncio.sleep(0.05)
        raise AssertionError("the kiosk never joined the room")

    async def set_state(self, state: str) -> None:
        await self.room.local_participant.set_attributes({"lk.agent.state": state})

    async def say(self, text: str, wav: Path, segment_id: str) -> None:
        """Speaks a WAV in real time while streaming its transcript, as an agent does."""
        assert self.source is not None
        await self.set_state("speaking")
        writer = await self.room.local_participant.stream_text(
            topic="lk.transcription",
            attributes={"lk.segment_id": segment_id, "lk.transcription_final": "true",
                        "lk.transcribed_track_id": self.track_sid},
        )
        words = text.split(" ")
        samples = read_wav(wav)
        frame = SAMPLE_RATE // 100
        for index, start in enumerate(range(0, len(samples) - frame, frame)):
            chunk = samples[start:start + frame]
            await self.source.capture_frame(rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, frame))
            if words and index % 25 == 0:
                await writer.write(words.pop(0) + " ")
        if words:
            await writer.write(" ".join(words))
        await writer.aclose()
        await self.source.wait_for_playout()
        await self.set_state("listening")

    async def show_video(self, kiosk: str, payload: str) -> str:
        return await self.room.local_participant.perform_rpc(
            destination_identity=kiosk, method="kiosk.show_video", payload=payload, response_timeout=10
        )

    async def close_room(self) -> None:
        """Ends the session the way JARVIS does when the conversation is over: the room goes."""
        http_url = self.stack.livekit_url.replace("ws://", "http://")
        lk = api.LiveKitAPI(http_url, self.stack.livekit_api_key, self.stack.livekit_api_secret)
        try:
            await lk.room.delete_room(api.DeleteRoomRequest(room=self.room_name))
        finally:
            await lk.aclose()

    async def leave(self) -> None:
        for task in self.listeners:
            task.cancel()
        await self.room.disconnect()


class SignalProxy:
    """A TCP relay in front of LiveKit's signalling port, to cut the kiosk's connection the way
    a flaky network does (media keeps its own UDP/TCP path; LiveKit notices the signal loss)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update({writer, up_writer})

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.writers.difference_update({writer, up_writer})

    def drop_connections(self) -> None:
        """A blip: every open connection dies; new ones go through."""
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def cut(self) -> None:
        """The network is gone: open connections die and new ones are refused."""
        if self.server is not None:
            self.server.close()
            self.server = None
        self.drop_connections()


LEGACY_VOICE_RMS = 0.01  # a 40 ms chunk louder than this is the member speaking, not room tone
LEGACY_RATE = 24_000  # the Realtime API's PCM16 rate


@dataclass
class LegacyProviderStandIn:
    """The chain's previous voice provider on loopback, speaking the OpenAI Realtime protocol that
    the kiosk's example provider (kiosk/src/openai-realtime.ts) uses with the real one:
    ``POST /v1/realtime/sessions`` (the gym backend, with the provider's API key) mints a client
    secret; the kiosk opens ``GET /v1/realtime?model=…`` as a WebSocket with that secret, streams
    its microphone (``input_audio_buffer.append``, PCM16 at 24 kHz) and, once a second of it
    arrived and some of it was voice, hears an answer (``response.audio.delta``: one second of a
    440 Hz tone). Waiting for voice is what the real one's server VAD does, and it keeps the test
    independent of where in its loop Chromium's fake microphone file was when the socket opened."""

    api_key: str = field(default_factory=lambda: "sk-standin-" + secrets.token_hex(8))
    secret: str = field(default_factory=lambda: "ek_" + secrets.token_hex(12))
    sessions: list[dict[str, Any]] = field(default_factory=list)  # what the gym backend asked for
    models: list[str] = field(default_factory=list)  # the model each kiosk connection named
    refused: int = 0  # connections with a wrong secret
    heard_s: float = 0.0  # seconds of the kiosk's microphone received
    heard_peak_rms: float = 0.0  # loudest 40 ms chunk of it (0..1)
    answered: asyncio.Event = field(default_factory=asyncio.Event)
    runner: web.AppRunner | None = None
    port: int = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/realtime"

    @property
    def demo_env(self) -> dict[str, str]:
        """What the demo gym backend needs to reach it (see kiosk/server/demo-server.mjs)."""
        return {"JARVIS_DEMO_LEGACY_ENDPOINT": self.endpoint, "JARVIS_DEMO_LEGACY_API_KEY": self.api_key}

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/realtime/sessions", self._mint)
        app.router.add_get("/v1/realtime", self._conversation)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = int(self.runner.addresses[0][1])

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _mint(self, request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return web.json_response({"error": {"message": "bad key"}}, status=401)
        self.sessions.append(await request.json())
        return web.json_response({"id": "sess_standin", "client_secret": {"value": self.secret, "expires_at": 0}})

    async def _conversation(self, request: web.Request) -> web.StreamResponse:
        offered = [p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")]
        if f"openai-insecure-api-key.{self.secret}" not in offered:
            self.refused += 1
            return web.json_response({"error": {"message": "bad client secret"}}, status=401)
        self.models.append(request.query.get("model", ""))
        ws = web.WebSocketResponse(protocols=("realtime",))
        await ws.prepare(request)
        await ws.send_json({"type": "session.created", "session": {"model": request.query.get("model")}})
        async for message in ws:
            if message.type != WSMsgType.TEXT:
                continue
            event = json.loads(message.data)
            if event.get("type") != "input_audio_buffer.append":
                continue
            chunk = np.frombuffer(base64.b64decode(event["audio"]), dtype="<i2").astype(np.float32) / 32768.0
            if chunk.size:
                self.heard_s += chunk.size / LEGACY_RATE
                self.heard_peak_rms = max(self.heard_peak_rms, float(np.sqrt(np.mean(chunk * chunk))))
            heard_voice = self.heard_peak_rms > LEGACY_VOICE_RMS
            if self.heard_s >= 1.0 and heard_voice and not self.answered.is_set():
                self.answered.set()
                await self._answer(ws)
        return ws

    async def _answer(self, ws: web.WebSocketResponse) -> None:
        t = np.arange(LEGACY_RATE) / LEGACY_RATE
        tone = (0.3 * 32767 * np.sin(2 * np.pi * 440 * t)).astype("<i2").tobytes()
        quarter = len(tone) // 4
        for start in range(0, len(tone), quarter):
            delta = base64.b64encode(tone[start:start + quarter]).decode()
            await ws.send_json({"type": "response.audio.delta", "response_id": "resp_1", "delta": delta})
        await ws.send_json({"type": "response.done", "response": {"id": "resp_1", "status": "completed"}})
