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
    assert len(livekit.filters) == 1
    with caplog.at_level(logging.INFO, logger="livekit.agents"):
        livekit.warning("stt end of speech received while vad is still in a speech segment, flushing vad",
                        extra={"flushed": True})
        livekit.warning("failed to synthesize speech")
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [("WARNING", "failed to synthesize speech")]
    with caplog.at_level(logging.DEBUG, logger="livekit.agents"):
        caplog.clear()
        livekit.warning("stt end of speech received while vad is still in a speech segment, flushing vad")
    assert [r.levelname for r in caplog.records] == ["DEBUG"]
