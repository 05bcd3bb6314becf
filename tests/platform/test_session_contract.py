"""The session contract: what the token service writes is what the worker reads, and the wire
names the kiosks and LiveKit's logs see stay what they were."""

from __future__ import annotations

import json
import uuid

import pytest

from jarvis import session_contract as contract
from jarvis.session_contract import SessionMetadata, SessionMetadataError, room_name


def test_metadata_round_trips_and_names_its_room() -> None:
    meta = SessionMetadata(str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4()), "accueil-1")
    assert SessionMetadata.parse(meta.serialize()) == meta
    assert json.loads(meta.serialize()) == {
        "session_id": meta.session_id, "gym_id": meta.gym_id, "member_id": meta.member_id, "kiosk_id": "accueil-1",
    }
    assert meta.room == room_name(meta.session_id) == f"jarvis-{meta.session_id}"


def test_wire_names_are_the_ones_kiosks_read() -> None:
    # The kiosk's TypeScript keeps its own literals: changing these breaks deployed kiosks.
    names = (contract.ATTR_SESSION_ID, contract.ATTR_GYM_ID, contract.ATTR_MEMBER_ID, contract.ATTR_READY)
    assert names == (
        "jarvis.session_id", "jarvis.gym_id", "jarvis.member_id", "jarvis.ready",
    )


@pytest.mark.parametrize("raw", [
    None, "", "not json", "[]", '{"session_id": "x", "gym_id": "y", "member_id": "z", "kiosk_id": "k"}',
    json.dumps({"session_id": str(uuid.uuid4()), "gym_id": str(uuid.uuid4()), "member_id": str(uuid.uuid4())}),
])
def test_anything_else_is_refused(raw: str | None) -> None:
    with pytest.raises(SessionMetadataError):
        SessionMetadata.parse(raw)
