"""The messages of Kyutai's streaming STT protocol (that of its Rust `moshi-server`, /api/asr-streaming).

Shared by our engine server and our LiveKit plugin, so that Kyutai's own clients work against our
server and our plugin against Kyutai's. One msgpack map per WebSocket binary message, tagged by
its `type` field.

client → server: `Audio {pcm: [float]}` (mono, 24 kHz, any length), `Marker {id: int}`
server → client: `Ready`, `Word {text, start_time}`, `EndWord {stop_time}`,
                 `Step {step_idx, prs, buffered_pcm}`, `Marker {id}`, `Error {message}`

Our server also closes a word still open when it echoes a Marker (`EndWord` just before it, the
time the word's last piece came): moshi-server sends a word's `EndWord` only when the next word
starts, so a turn's last word would have no end.

Authentication, framing and close codes: `kyutai_common.protocol`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

# The shared wire (keys, frame sizes, close codes, pack/unpack), extended here: one namespace for both.
from kyutai_common.protocol import *  # noqa: F403
from kyutai_common.protocol import FRAME_RATE, SAMPLE_RATE, ProtocolError, unpack

PATH = "/api/asr-streaming"
MAX_AUDIO_SAMPLES = SAMPLE_RATE * 10  # one message carries at most 10 s: larger is a client bug


@dataclass(frozen=True, slots=True)
class AudioIn:
    pcm: np.ndarray  # float32, finite


@dataclass(frozen=True, slots=True)
class MarkerIn:
    id: int


def parse_client_message(data: bytes | str) -> AudioIn | MarkerIn | None:
    """Validate a client message. Returns None for messages that carry nothing to do (`Init`)."""
    if isinstance(data, str):
        raise ProtocolError("expected a binary msgpack message, got a text frame")
    message = unpack(data)
    kind = message["type"]
    if kind == "Audio":
        pcm = message.get("pcm")
        if not isinstance(pcm, list | tuple | bytes):
            raise ProtocolError("Audio.pcm must be a list of floats")
        if isinstance(pcm, bytes):
            if len(pcm) % 4:
                raise ProtocolError("Audio.pcm bytes must hold float32 samples")
            samples = np.frombuffer(pcm, dtype="<f4").astype(np.float32)
        else:
            if len(pcm) > MAX_AUDIO_SAMPLES:
                raise ProtocolError(f"Audio.pcm holds more than {MAX_AUDIO_SAMPLES} samples")
            # numpy infers the element type in C: strings, None or nested lists show in the dtype
            # (a per-sample isinstance check costs more than the model step at high load).
            try:
                inferred = np.asarray(pcm)
            except (ValueError, TypeError) as exc:
                raise ProtocolError("Audio.pcm must be a list of numbers") from exc
            if inferred.ndim != 1 or inferred.dtype.kind not in "fiu":
                if inferred.size:
                    raise ProtocolError("Audio.pcm must be a list of numbers")
            samples = inferred.astype(np.float32, copy=False)
        if samples.size > MAX_AUDIO_SAMPLES:
            raise ProtocolError(f"Audio.pcm holds more than {MAX_AUDIO_SAMPLES} samples")
        if not np.isfinite(samples).all():
            raise ProtocolError("Audio.pcm contains NaN or infinite samples")
        return AudioIn(samples)
    if kind == "Marker":
        marker_id = message.get("id")
        if not isinstance(marker_id, int) or isinstance(marker_id, bool):
            raise ProtocolError("Marker.id must be an integer")
        return MarkerIn(marker_id)
    if kind == "Init":
        return None
    if kind == "OggOpus":
        raise ProtocolError("OggOpus audio is not supported by this server: send Audio {pcm}")
    raise ProtocolError(f"unknown message type {kind!r}")


# messages to send (plain dicts: they are packed as they are)


def ready() -> dict[str, Any]:
    return {"type": "Ready"}


def word(text: str, start_time: float) -> dict[str, Any]:
    return {"type": "Word", "text": text, "start_time": float(start_time)}


def end_word(stop_time: float) -> dict[str, Any]:
    return {"type": "EndWord", "stop_time": float(stop_time)}


def step(step_idx: int, prs: list[float], buffered_pcm: int) -> dict[str, Any]:
    return {"type": "Step", "step_idx": int(step_idx), "prs": [float(p) for p in prs], "buffered_pcm": buffered_pcm}


def marker(marker_id: int) -> dict[str, Any]:
    """`Marker {id}`: the same map both ways (the server echoes a client's marker)."""
    return {"type": "Marker", "id": int(marker_id)}


def error(message: str) -> dict[str, Any]:
    return {"type": "Error", "message": message}


def audio(pcm: np.ndarray | list[float]) -> dict[str, Any]:
    """A client `Audio` message (float32 samples sent as a msgpack float list, as Kyutai's clients do)."""
    samples = np.asarray(pcm, dtype=np.float32)
    return {"type": "Audio", "pcm": samples.tolist()}


def frames_for(seconds: float) -> int:
    """Whole model frames covering `seconds` (rounded up)."""
    return math.ceil(seconds * FRAME_RATE - 1e-9)
