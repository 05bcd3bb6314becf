"""The worker's log at 3 a.m.: a turn that Kyutai's end-of-speech head ended before silero's
silence hangover (every turn, by design) is not a warning; livekit-agents' other warnings are."""

from __future__ import annotations

import logging

import pytest

from agent.worker import quiet_routine_notices


def test_a_routine_stt_end_of_turn_is_no_warning_but_other_livekit_warnings_still_are(
    caplog: pytest.LogCaptureFixture,
) -> None:
    quiet_routine_notices()
    quiet_routine_notices()  # once per process, however often a job calls it
    livekit = logging.getLogger("livekit.agents")
    assert len(livekit.filters) == 2  # the routine notice and the member's words, each once
    with caplog.at_level(logging.INFO, logger="livekit.agents"):
        livekit.warning("stt end of speech received while vad is still in a speech segment, flushing vad",
                        extra={"flushed": True})
        livekit.warning("failed to synthesize speech")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "failed to synthesize speech")]
    with caplog.at_level(logging.DEBUG, logger="livekit.agents"):
        caplog.clear()
        livekit.warning("stt end of speech received while vad is still in a speech segment, flushing vad")
    assert [r.levelname for r in caplog.records] == ["DEBUG"]


def test_what_the_member_said_never_reaches_the_log_but_the_warning_does(caplog: pytest.LogCaptureFixture) -> None:
    """livekit-agents' overload warnings carry the member's words and JARVIS's reply as lk.pii.* fields."""
    quiet_routine_notices()
    livekit = logging.getLogger("livekit.agents")
    with caplog.at_level(logging.INFO, logger="livekit.agents"):
        livekit.warning("skipping user input, speech scheduling is paused",
                        extra={"lk.pii.user_input": "j'ai mal au genou depuis ma chute", "speech_id": "speech_1"})
        livekit.warning("final transcript not received after timeout",
                        extra={"lk.pii.interim_transcript": "je m'appelle Julie Martin", "transcript_timeout": 2.0})
    assert [r.getMessage() for r in caplog.records] == [
        "skipping user input, speech scheduling is paused", "final transcript not received after timeout"]
    fields = [vars(r) for r in caplog.records]
    assert not any(key.startswith("lk.pii") for record in fields for key in record), fields
    assert fields[0]["speech_id"] == "speech_1" and fields[1]["transcript_timeout"] == 2.0  # the rest stays
    assert "genou" not in caplog.text and "Julie" not in caplog.text
