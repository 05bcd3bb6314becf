"""What WebRTC's jitter buffer adds to a turn, as a session reports it: a kiosk's voice crosses the
real SFU → the room that hears it reports how long that audio waited in its jitter buffer."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from livekit import api, rtc

from jarvis.audio_stats import inbound_audio_jitter, room_audio_jitter
from jarvis_local.stack import LocalStack

pytestmark = pytest.mark.integration

RATE = 48_000
FRAME = RATE // 100  # 10 ms


def _token(stack: LocalStack, identity: str) -> str:
    grants = api.VideoGrants(room_join=True, room="jitter-buffer")
    return (api.AccessToken(stack.livekit_api_key, stack.livekit_api_secret)
            .with_identity(identity).with_grants(grants).to_jwt())


async def test_the_room_that_hears_a_kiosk_reports_its_jitter_buffer(stack: LocalStack) -> None:
    kiosk, jarvis = rtc.Room(), rtc.Room()
    heard = asyncio.Event()

    def on_track(track: rtc.Track, *_: object) -> None:
        async def listen() -> None:
            async for _event in rtc.AudioStream(track, sample_rate=RATE, num_channels=1):
                heard.set()

        asyncio.get_running_loop().create_task(listen())

    jarvis.on("track_subscribed", on_track)
    await jarvis.connect(stack.livekit_url, _token(stack, "jarvis"))
    await kiosk.connect(stack.livekit_url, _token(stack, "kiosk"))
    microphone = rtc.AudioSource(RATE, 1, queue_size_ms=40)
    try:
        track = rtc.LocalAudioTrack.create_audio_track("microphone", microphone)
        await kiosk.local_participant.publish_track(
            track, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        tone = (3000 * np.sin(np.arange(FRAME) * 2 * np.pi * 440 / RATE)).astype(np.int16).tobytes()
        for _ in range(200):  # 2 s of voice, paced by the source's short queue as a microphone is
            await microphone.capture_frame(rtc.AudioFrame(tone, RATE, 1, FRAME))
        await asyncio.wait_for(heard.wait(), 10)

        buffers = await room_audio_jitter(jarvis)
        assert len(buffers) == 1, "one inbound audio track: the kiosk's microphone"
        (buffer,) = buffers
        assert buffer.emitted_samples > RATE // 2  # it played at least half a second
        assert 0 < buffer.mean_delay_ms < 500
        # The sending side has no inbound audio; a room that left says nothing instead of raising.
        assert await room_audio_jitter(kiosk) == []
        await jarvis.disconnect()
        assert await room_audio_jitter(jarvis) == []
    finally:
        await kiosk.disconnect()
        await jarvis.disconnect()
        await microphone.aclose()


def test_tracks_that_played_nothing_or_carry_video_are_not_reported() -> None:
    played = rtc.stats.RtcStats()
    played.inbound_rtp.stream.kind = "audio"
    played.inbound_rtp.inbound.jitter_buffer_delay = 4_800.0  # seconds, summed over every sample emitted: 50 ms each
    played.inbound_rtp.inbound.jitter_buffer_target_delay = 3_200.0
    played.inbound_rtp.inbound.jitter_buffer_emitted_count = 96_000
    not_yet = rtc.stats.RtcStats()
    not_yet.inbound_rtp.stream.kind = "audio"
    video = rtc.stats.RtcStats()
    video.inbound_rtp.stream.kind = "video"
    video.inbound_rtp.inbound.jitter_buffer_emitted_count = 10
    stats = rtc.RtcStats(publisher_stats=[video], subscriber_stats=[not_yet, played])
    (buffer,) = inbound_audio_jitter(stats)
    assert (buffer.mean_delay_ms, buffer.target_delay_ms, buffer.emitted_samples) == (50.0, 33.3, 96_000)
