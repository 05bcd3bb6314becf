"""The messages of Kyutai's streaming TTS protocol (that of its Rust `moshi-server`).

Shared by our engine server and our LiveKit plugin, and written so that Kyutai's own
clients and server interoperate with ours: one msgpack map per WebSocket binary message,
tagged by its `type` field.

client → server: `Text {text}`, `Voice {embeddings, shape}`, `Eos`
                 (moshi-server also takes a plain text frame as `Text` and the binary frame
                 b"\\0" as `Eos`; so do we)
server → client: `Ready`, `Audio {pcm}` (float32 mono at 24 kHz), `Text {text, start_s, stop_s}`,
                 `Error {message}`

Authentication, framing and close codes: `kyutai_common.protocol`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# The shared wire (keys, frame sizes, close codes, pack/unpack), extended here: one namespace for both.
from kyutai_common.protocol import *  # noqa: F403
from kyutai_common.protocol import ProtocolError, pack, unpack

PATH = "/api/tts_streaming"
PCM_FORMAT = "PcmMessagePack"
EOS_BINARY = b"\0"


# client → server


@dataclass(frozen=True, slots=True)
class TextIn:
    text: str


@dataclass(frozen=True, slots=True)
class VoiceIn:
    embeddings: list[float]
    shape: list[int]


@dataclass(frozen=True, slots=True)
class EosIn:
    pass


# server → client


@dataclass(frozen=True, slots=True)
class Ready:
    pass


@dataclass(frozen=True, slots=True)
class Audio:
    pcm: list[float]


@dataclass(frozen=True, slots=True)
class TextOut:
    text: str
    start_s: float
    stop_s: float


@dataclass(frozen=True, slots=True)
class ErrorOut:
    message: str


ClientMessage = TextIn | VoiceIn | EosIn
ServerMessage = Ready | Audio | TextOut | ErrorOut


def encode(message: ClientMessage | ServerMessage) -> bytes:
    """One msgpack map with its `type` tag. Floats go out as float32, as moshi-server sends them."""
    body: dict[str, Any]
    match message:
        case TextIn(text=text):
            body = {"type": "Text", "text": text}
        case VoiceIn(embeddings=embeddings, shape=shape):
            body = {"type": "Voice", "embeddings": list(embeddings), "shape": list(shape)}
        case EosIn():
            body = {"type": "Eos"}
        case Ready():
            body = {"type": "Ready"}
        case Audio(pcm=pcm):
            body = {"type": "Audio", "pcm": pcm}
        case TextOut(text=text, start_s=start_s, stop_s=stop_s):
            body = {"type": "Text", "text": text, "start_s": start_s, "stop_s": stop_s}
        case ErrorOut(message=text):
            body = {"type": "Error", "message": text}
        case _:
            raise ProtocolError(f"not a protocol message: {type(message).__name__}")
    return pack(body)


def _field(body: Mapping[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    value = body.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ProtocolError(f"{body['type']} needs `{name}`")
    return value


def decode_client(data: bytes | str) -> ClientMessage:
    """A client frame: msgpack, or moshi-server's shortcuts (text frame, b"\\0")."""
    if isinstance(data, str):
        return TextIn(data)
    if data == EOS_BINARY:
        return EosIn()
    body = unpack(data)
    match body["type"]:
        case "Text":
            return TextIn(_field(body, "text", str))
        case "Eos":
            return EosIn()
        case "Voice":
            embeddings = _field(body, "embeddings", (list, tuple))
            shape = _field(body, "shape", (list, tuple))
            if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
                raise ProtocolError("Voice `shape` must be positive integers")
            if math.prod(shape) != len(embeddings):
                raise ProtocolError(f"Voice has {len(embeddings)} values for shape {list(shape)}")
            if not all(isinstance(v, int | float) for v in embeddings):
                raise ProtocolError("Voice `embeddings` must be numbers")
            return VoiceIn([float(v) for v in embeddings], [int(d) for d in shape])
        case other:
            raise ProtocolError(f"unknown client message type {other!r}")


def decode_server(data: bytes) -> ServerMessage:
    body = unpack(data)
    match body["type"]:
        case "Ready":
            return Ready()
        case "Audio":
            return Audio([float(v) for v in _field(body, "pcm", (list, tuple))])
        case "Text":
            return TextOut(
                _field(body, "text", str),
                float(_field(body, "start_s", (int, float))),
                float(_field(body, "stop_s", (int, float))),
            )
        case "Error":
            return ErrorOut(str(body.get("message", "")))
        case other:
            raise ProtocolError(f"unknown server message type {other!r}")


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """The query string of /api/tts_streaming (moshi-server's names)."""

    voice: str | None = None
    cfg_alpha: float | None = None
    seed: int | None = None
    temperature: float | None = None
    format: str = PCM_FORMAT

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> StreamQuery:
        def number(name: str, kind: type[int] | type[float]) -> Any:
            raw = params.get(name)
            if raw is None or raw == "":
                return None
            try:
                value = kind(raw)
            except ValueError as exc:
                raise ProtocolError(f"query `{name}` must be a number, got {raw!r}") from exc
            if isinstance(value, float) and not math.isfinite(value):
                raise ProtocolError(f"query `{name}` must be finite")
            return value

        fmt = params.get("format") or PCM_FORMAT
        if fmt != PCM_FORMAT:
            raise ProtocolError(f"only format={PCM_FORMAT} is served, got {fmt!r}")
        temperature = number("temperature", float)
        if temperature is not None and not 0.0 <= temperature <= 5.0:
            raise ProtocolError("query `temperature` must be within [0, 5]")
        seed = number("seed", int)
        if seed is not None and not 0 <= seed < 2**63:
            raise ProtocolError("query `seed` must be a non-negative 64-bit integer")
        return cls(
            voice=params.get("voice") or None,
            cfg_alpha=number("cfg_alpha", float),
            seed=seed,
            temperature=temperature,
            format=fmt,
        )

    def to_params(self) -> dict[str, str]:
        out = {"format": self.format}
        if self.voice is not None:
            out["voice"] = self.voice
        if self.cfg_alpha is not None:
            out["cfg_alpha"] = str(self.cfg_alpha)
        if self.seed is not None:
            out["seed"] = str(self.seed)
        if self.temperature is not None:
            out["temperature"] = str(self.temperature)
        return out
