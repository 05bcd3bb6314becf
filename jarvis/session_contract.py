"""The session contract between the token service and the worker.

The token service writes the dispatch metadata and names the room; the worker reads the
metadata back and, once it holds the member's context, publishes the participant attributes
that kiosks wait for. Ids only: the metadata and the room name reach LiveKit's logs.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass

# Participant attributes the agent publishes once it holds the member's context.
ATTR_SESSION_ID = "jarvis.session_id"
ATTR_GYM_ID = "jarvis.gym_id"
ATTR_MEMBER_ID = "jarvis.member_id"
ATTR_READY = "jarvis.ready"


def room_name(session_id: str) -> str:
    return f"jarvis-{session_id}"


class SessionMetadataError(ValueError):
    """The job's metadata does not name a valid session."""


@dataclass(frozen=True)
class SessionMetadata:
    """What the agent dispatch carries from the token service to the worker."""

    session_id: str
    gym_id: str
    member_id: str
    kiosk_id: str

    @property
    def room(self) -> str:
        return room_name(self.session_id)

    def serialize(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def parse(cls, raw: str | None) -> SessionMetadata:
        try:
            data = json.loads(raw or "")
            meta = cls(
                session_id=str(uuid.UUID(data["session_id"])),
                gym_id=str(uuid.UUID(data["gym_id"])),
                member_id=str(uuid.UUID(data["member_id"])),
                kiosk_id=str(data["kiosk_id"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise SessionMetadataError(f"job metadata is not a JARVIS session: {type(exc).__name__}") from exc
        return meta
