"""What WebRTC's receive side adds to a voice turn: the jitter buffer's hold on incoming audio.

NetEq (WebRTC's audio jitter buffer) grows its target delay when packets arrive unevenly, and
every frame of the voice then waits that long before anyone hears it. On a busy host this is a
latency cost no stage timer of ours sees, so sessions report it beside their turn times."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from livekit import rtc


@dataclass(frozen=True)
class JitterBuffer:
    """One inbound audio track's jitter buffer over its life so far."""

    mean_delay_ms: float  # how long an emitted sample sat in the buffer, on average
    target_delay_ms: float  # NetEq's own average target: what it aimed to hold
    emitted_samples: int
    concealed_samples: int  # samples NetEq made up because no packet was there in time

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def inbound_audio_jitter(stats: rtc.RtcStats) -> list[JitterBuffer]:
    """The jitter buffer of every inbound audio track in ``stats`` that has played anything."""
    buffers = []
    # livekit-rtc files a peer connection's stats under either list depending on how the SFU
    # negotiated (one connection or two), so both are read; only inbound audio has a jitter buffer.
    for entry in [*stats.publisher_stats, *stats.subscriber_stats]:
        if entry.WhichOneof("stats") != "inbound_rtp" or entry.inbound_rtp.stream.kind != "audio":
            continue
        inbound = entry.inbound_rtp.inbound
        emitted = inbound.jitter_buffer_emitted_count
        if emitted <= 0:
            continue
        buffers.append(JitterBuffer(
            mean_delay_ms=round(inbound.jitter_buffer_delay / emitted * 1000, 1),
            target_delay_ms=round(inbound.jitter_buffer_target_delay / emitted * 1000, 1),
            emitted_samples=int(emitted),
            concealed_samples=int(inbound.concealed_samples),
        ))
    return buffers


async def room_audio_jitter(room: rtc.Room) -> list[JitterBuffer]:
    """``inbound_audio_jitter`` of a connected room; empty when the room is gone or says nothing."""
    if not room.isconnected():
        return []
    try:
        return inbound_audio_jitter(await room.get_rtc_stats())
    except RuntimeError:
        return []
