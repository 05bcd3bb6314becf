"""The parts of Kyutai's streaming protocols (those of its Rust `moshi-server`) that STT and TTS share.

One msgpack map per WebSocket binary message, tagged by its `type` field; the API key in the
`kyutai-api-key` header or the `auth_id` query parameter.

How a stream ended is told by the WebSocket close code that follows an `Error` (moshi-server's
`Error` carries only a message, so the maps stay exactly Kyutai's):
- `CLOSE_CLIENT_ERROR` (1008, policy violation): the client broke the protocol or its limits;
  sending the same again fails again.
- `CLOSE_ENGINE_ERROR` (1011, internal error): the engine failed; another try may work.
- `CLOSE_FULL` (1013, try again later): no free slot (`Error {message: "no free channels"}`).
- `CLOSE_RESTART` (1012, service restart; no `Error` before it): a draining STT engine ended the
  stream between two of the member's turns, after the last final was sent; the client carries on
  on another replica at once (nothing is lost: it replays the audio sent since that final).
"""

from __future__ import annotations

from typing import Any

import msgpack

__all__ = [
    "API_KEY_HEADER",
    "API_KEY_QUERY",
    "CLOSE_CLIENT_ERROR",
    "CLOSE_ENGINE_ERROR",
    "CLOSE_FULL",
    "CLOSE_NORMAL",
    "CLOSE_RESTART",
    "CLOSE_TOO_BIG",
    "DRAINING",
    "FRAME_RATE",
    "FRAME_SAMPLES",
    "MAX_ARRAY_LEN",
    "NO_FREE_CHANNELS",
    "SAMPLE_RATE",
    "ProtocolError",
    "http_url",
    "pack",
    "unpack",
]

API_KEY_HEADER = "kyutai-api-key"
API_KEY_QUERY = "auth_id"
SAMPLE_RATE = 24_000
FRAME_RATE = 12.5
FRAME_SAMPLES = 1920  # 80 ms at 24 kHz: one model step
NO_FREE_CHANNELS = "no free channels"  # moshi-server's wording when it is full; clients match it
# A draining engine (SIGTERM) refuses as a full one does, so every client retries elsewhere.
DRAINING = f"{NO_FREE_CHANNELS}: draining"

CLOSE_NORMAL = 1000
CLOSE_CLIENT_ERROR = 1008
CLOSE_ENGINE_ERROR = 1011
CLOSE_FULL = 1013
CLOSE_RESTART = 1012
CLOSE_TOO_BIG = 1009  # a message over the server's max message size (RFC 6455 "message too big")


def http_url(engine_url: str, path: str) -> str:
    """An engine's HTTP endpoint from its stream address: ws://host:port -> http://host:port<path>
    (wss -> https), for its /api/health and /metrics."""
    scheme, rest = engine_url.split("://", 1)
    return f"{'https' if scheme == 'wss' else 'http'}://{rest.split('?')[0].rstrip('/')}{path}"


class ProtocolError(ValueError):
    """A message that does not follow the protocol (the stream that sent it is ended)."""


def pack(message: dict[str, Any]) -> bytes:
    """Encode one message; floats as float32, as moshi-server and Kyutai's clients send them."""
    packed = msgpack.packb(message, use_bin_type=True, use_single_float=True)
    assert isinstance(packed, bytes)
    return packed


# Decoding limits: a frame is already bounded in bytes (the servers' max message size), but
# msgpack turns one byte into one Python object (an empty array is 1 byte and 56 in memory), so
# the shape is bounded too. Our messages are one flat map holding at most one list and scalars.
MAX_MAP_LEN = 32  # keys in one map
MAX_CONTAINERS = 16  # maps and arrays in one message
MAX_ARRAY_LEN = 2**18  # items in one array: 10 s of audio samples, a voice embedding


def unpack(data: bytes, *, max_array_len: int = MAX_ARRAY_LEN) -> dict[str, Any]:
    """Decode one message into a dict with a string `type`; raises ProtocolError otherwise.

    Bounded: at most `max_array_len` items per array, `MAX_MAP_LEN` keys per map and
    `MAX_CONTAINERS` maps and arrays in all (checked while decoding, so a frame of a million
    empty arrays fails after a few dozen)."""
    containers = 0

    def count(value: Any) -> Any:
        nonlocal containers
        containers += 1
        if containers > MAX_CONTAINERS:
            raise ProtocolError(f"more than {MAX_CONTAINERS} maps and arrays in one message")
        return value

    try:
        message = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_str_len=len(data),
            max_bin_len=len(data),
            max_array_len=max_array_len,
            max_map_len=MAX_MAP_LEN,
            max_ext_len=0,
            list_hook=count,
            object_hook=count,
        )
    except ProtocolError:
        raise
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise ProtocolError(f"not a msgpack message: {exc}") from exc
    if not isinstance(message, dict) or not isinstance(message.get("type"), str):
        raise ProtocolError("a message must be a msgpack map with a string 'type'")
    return message
