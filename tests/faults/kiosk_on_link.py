"""The kiosk process of the impaired-link row: run inside the kiosk's network namespace.

    ip netns exec <ns> python -m tests.faults.kiosk_on_link '<json: livekit_url, token, questions>'

Joins with the token the gym backend got, hears the greeting out, speaks each question (espeak-ng)
and waits until JARVIS has finished speaking (3 s of quiet), then leaves. Prints one JSON line: the greeting's
wait, each turn's voice-to-voice time (null: no answer, a lost turn) and what JARVIS said.
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import time
from typing import Any

from jarvis_local.kiosk_sim import SimulatedKiosk, poll, synthesize_french

ANSWER_WITHIN_S = 20.0
# Longer than a cut answer's stop plus the next answer's voice-to-voice time on this link.
DONE_QUIET_S = 3.0


def said_lines(kiosk: SimulatedKiosk, count: int) -> bool:
    return len(kiosk.transcripts) >= count


async def visit(livekit_url: str, token: str, questions: list[str]) -> dict[str, Any]:
    result: dict[str, Any] = {"turns": []}
    joined = time.perf_counter()
    # livekit's own connect tries 3 times; a further rejoin (kiosk/src/reconnect.ts) did not help
    # here and cost a minute each, over the matrix's time budget.
    kiosk = SimulatedKiosk()
    await kiosk.join(livekit_url, token)
    try:
        await poll(kiosk.agent, 60, what="JARVIS to join")
        greeting = await poll(lambda: kiosk.heard.first_speech_after(joined), 30, what="the greeting")
        result["greeting_after_s"] = greeting - joined
        # A line's transcription is complete once it has been spoken to its end: the member waits
        # for that (a gap in the audio of a slow TTS is not the end of the answer), or, as a member
        # who reads nothing would, for the voice to have been quiet a while. The transcript crosses
        # the lossy link on LiveKit's reliable data channel, whose retransmissions back off: in CI
        # (2026-12-05) the greeting was heard in full and its line had not come 30 s later.
        greeting_done = functools.partial(kiosk.heard.stopped_after, greeting, DONE_QUIET_S)
        await poll(lambda: kiosk.transcripts or greeting_done(), 30, what="the end of the greeting")
        for index, question in enumerate(questions):
            turn = await kiosk.say(synthesize_french(question), question)
            answered = await poll(functools.partial(kiosk.heard.first_speech_after, turn.voice_end), ANSWER_WITHIN_S)
            v2v_ms = None if answered is None else 1000 * (answered - turn.voice_end)
            result["turns"].append({"question": question, "v2v_ms": v2v_ms})
            if answered is not None:
                await poll(functools.partial(said_lines, kiosk, index + 2), 30)
                # The member waits until JARVIS has said all it will. When a lost packet split the
                # question, the line above may be the answer to its first half, cut by its second
                # half, whose own answer is still to come (CI, 2026-12-04: the kiosk left during it).
                finished = functools.partial(kiosk.heard.stopped_after, answered, DONE_QUIET_S)
                await poll(finished, 60, what="JARVIS to finish")
        result["jarvis_said"] = [text for _at, text in kiosk.transcripts]
        result["stt_heard"] = len(kiosk.member_transcripts)
    finally:
        await kiosk.leave()
    return result


def main() -> None:
    args = json.loads(sys.argv[1])
    result = asyncio.run(visit(args["livekit_url"], args["token"], args["questions"]))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
