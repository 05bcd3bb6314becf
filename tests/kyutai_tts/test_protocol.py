"""The protocol module: moshi-server's msgpack messages, and bad input as typed errors."""

from __future__ import annotations

import msgpack
import pytest
from kyutai_tts import protocol


@pytest.mark.parametrize(
    "message",
    [
        protocol.TextIn("Bonjour"),
        protocol.VoiceIn([0.5, -1.0, 2.0, 0.0, 1.0, 3.0], [1, 2, 3]),
        protocol.EosIn(),
    ],
)
def test_client_messages_round_trip(message: protocol.ClientMessage) -> None:
    assert protocol.decode_client(protocol.encode(message)) == message


def test_server_messages_are_the_maps_moshi_server_sends() -> None:
    assert msgpack.unpackb(protocol.encode(protocol.Ready())) == {"type": "Ready"}
    word = msgpack.unpackb(protocol.encode(protocol.TextOut("heures", 1.28, 1.6)))
    assert word["type"] == "Text" and word["text"] == "heures"
    assert word["start_s"] == pytest.approx(1.28) and word["stop_s"] == pytest.approx(1.6)
    audio = protocol.encode(protocol.Audio([0.25] * 1920))
    assert len(audio) < 1920 * 5 + 32  # float32 on the wire, as moshi-server sends it
    assert protocol.decode_server(audio) == protocol.Audio([0.25] * 1920)


def test_moshi_servers_shortcuts_are_accepted() -> None:
    assert protocol.decode_client("Bonjour Julie") == protocol.TextIn("Bonjour Julie")
    assert protocol.decode_client(b"\0") == protocol.EosIn()


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        (b"\xc1", "not a msgpack message"),
        (msgpack.packb([1, 2]), "msgpack map"),
        (msgpack.packb({"type": "Shout"}), "unknown client message type"),
        (msgpack.packb({"type": "Text"}), "needs `text`"),
        (msgpack.packb({"type": "Voice", "embeddings": [1.0, 2.0], "shape": [1, 3]}), "2 values for shape"),
        (msgpack.packb({"type": "Voice", "embeddings": [1.0], "shape": [0]}), "positive integers"),
        (msgpack.packb({"type": "Voice", "embeddings": ["a"], "shape": [1]}), "must be numbers"),
    ],
)
def test_bad_client_messages_are_protocol_errors(raw: bytes, error: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=error):
        protocol.decode_client(raw)


def test_the_query_is_parsed_and_checked() -> None:
    query = protocol.StreamQuery.parse(
        {"voice": "cml-tts/fr/x.wav", "cfg_alpha": "1.5", "seed": "42", "temperature": "0.6", "top_k": "250"}
    )
    assert query == protocol.StreamQuery("cml-tts/fr/x.wav", 1.5, 42, 0.6, "PcmMessagePack")
    assert protocol.StreamQuery.parse(query.to_params()) == query
    for bad, error in [
        ({"temperature": "nan"}, "finite"),
        ({"temperature": "9"}, "within"),
        ({"seed": "-1"}, "non-negative"),
        ({"cfg_alpha": "x"}, "must be a number"),
        ({"format": "Pcm"}, "only format"),
    ]:
        with pytest.raises(protocol.ProtocolError, match=error):
            protocol.StreamQuery.parse(bad)
