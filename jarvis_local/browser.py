"""What the browser tests and bench need besides the stack: the kiosk build, the demo gym backend,
a French WAV for the fake microphone, a scripted stand-in agent, and the node runner that
plays a scenario in Debian's Chromium."""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import tempfile
import wave
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
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


def demo_server(token_service_url: str) -> contextlib.AbstractContextManager[str]:
    """The demo gym backend (kiosk/server/demo-server.mjs) on a free port; yields its URL."""
    return kiosk_page(token_service_url)


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
