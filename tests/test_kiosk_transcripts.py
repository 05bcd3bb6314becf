"""What `make demo` prints as the member's words: the STT's finals only, never its interim guesses.

The attributes are those LiveKit's agent puts on its `lk.transcription` text streams (names from
livekit.agents.types): interim streams say `final: false`, the final one `true`; the member's
streams carry the kiosk's microphone track, JARVIS's its own.
"""

from __future__ import annotations

from livekit.agents.types import (
    ATTRIBUTE_TRANSCRIPTION_FINAL,
    ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID,
    ATTRIBUTE_TRANSCRIPTION_TRACK_ID,
)

from jarvis_local.kiosk_sim import transcript_kind

KIOSK = "kiosk-lobby"
MIC = "TR_kioskmic"


def member_stream(final: bool) -> dict[str, str]:
    return {
        ATTRIBUTE_TRANSCRIPTION_FINAL: "true" if final else "false",
        ATTRIBUTE_TRANSCRIPTION_TRACK_ID: MIC,
        ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: "SG_1",
    }


def test_the_members_interim_guesses_are_not_what_the_member_said() -> None:
    # Sent by the agent on the member's behalf (its identity is the agent's or the kiosk's).
    for sender in ("agent-jarvis", KIOSK):
        assert transcript_kind(member_stream(final=False), sender, KIOSK, {MIC}) == "member_interim"
        assert transcript_kind(member_stream(final=True), sender, KIOSK, {MIC}) == "member_final"


def test_jarvis_words_are_kept_whatever_their_final_flag() -> None:
    agent_track = {ATTRIBUTE_TRANSCRIPTION_TRACK_ID: "TR_agentvoice", ATTRIBUTE_TRANSCRIPTION_SEGMENT_ID: "SG_2"}
    for final in ("false", "true"):
        attributes = agent_track | {ATTRIBUTE_TRANSCRIPTION_FINAL: final}
        assert transcript_kind(attributes, "agent-jarvis", KIOSK, {MIC}) == "agent"
