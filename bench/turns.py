"""One definition of a turn's fate for every bench: answered, late, lost, junk. Pure: no I/O.

A bench (``voice_loop``, ``kiosk_browser``) notes, per member utterance, on the kiosk's own
clock (seconds; any one clock per kiosk, ``time.time()`` or ``time.monotonic()``):

- ``voice_end``: when the last voiced sample of the utterance was sent (or captured);
- ``next_start``: when the member's next utterance began (``None`` for the last one);
- ``first_audio``: when the first agent audio after ``voice_end`` was heard (``None``: none).

and optionally the agent's stage times for the turn that answered it (``member_final_ms``
from the kiosk; ``llm_ttft_ms`` and ``tts_ttfa_ms`` from the agent's per-turn export,
``jarvis.turn_metrics``), then calls :func:`summarize`.

Definitions (constants below):

- **answered**: agent audio came after ``voice_end``, before the next utterance began and
  within ``LOST_AFTER_S`` (10 s, inclusive). ``v2v_ms = first_audio - voice_end``.
- **late_turns**: answered with ``v2v_ms`` over ``LATE_AFTER_S`` (3 s, strict). Late turns are
  answered turns too (``answered`` counts them).
- **lost_turns**: not answered: no agent audio, audio only after the next utterance began, or
  after 10 s. Plus ``never_spoken`` (utterances a kiosk could not say: its session never got
  JARVIS). ``answered + lost_turns == turns``.
- **junk_answers**: agent speech onsets (the caller's ``agent_onsets``: starts of agent speech
  after silence) that are not the first audio of an answered utterance: answers to junk
  transcripts of silence, or an answer arriving once its utterance was already lost.
- ``v2v_ms_p50/p95`` over answered turns only; ``overhead_ms`` per answered turn that has all
  three stage times: ``v2v_ms - member_final_ms - llm_ttft_ms - tts_ttfa_ms`` (what is left:
  the agent's turn handling, sentence chunking, transport, jitter buffers), then its
  percentiles. An empty sample gives ``None`` (JSON ``null``), never 0.

API::

    Utterance(voice_end, next_start, first_audio, member_final_ms=None, llm_ttft_ms=None,
              tts_ttfa_ms=None)
    outcome(u) -> Outcome                   # answered / late / v2v_ms / overhead_ms for one utterance
    summarize(utterances, agent_onsets=(), never_spoken=0) -> dict     # one kiosk's utterances
    summarize_kiosks([(utterances, agent_onsets), ...], never_spoken=0) -> dict  # several kiosks
        # {"turns", "answered", "late_turns", "lost_turns", "junk_answers", "v2v_ms_p50",
        #  "v2v_ms_p95", "overhead_ms_p50", "overhead_ms_p95", "member_final_ms_p50"}
    percentile(values, pct) -> float | None  # nearest rank; None when empty
    ratio_interval(reference, measured, pct) -> (low, high) | None  # bootstrap, 90 %
    next_starts(starts) -> list[float | None] # each utterance's next start, from the starts in order
    match_agent_turn(voice_end, first_audio, agent_turns) -> dict | None
        # the agent's turn record (jarvis.turn_metrics) whose audio the kiosk heard first
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

LATE_AFTER_S = 3.0
LOST_AFTER_S = 10.0
# An onset this close to an answered utterance's first audio is that answer (the bench's onset
# and first-audio readings may differ by a frame or two).
SAME_ONSET_S = 0.1


@dataclass(frozen=True)
class Utterance:
    voice_end: float
    next_start: float | None
    first_audio: float | None
    member_final_ms: float | None = None
    llm_ttft_ms: float | None = None
    tts_ttfa_ms: float | None = None


@dataclass(frozen=True)
class Outcome:
    answered: bool
    late: bool
    v2v_ms: float | None  # only for answered utterances
    overhead_ms: float | None  # only for answered utterances with all three stage times


def outcome(u: Utterance, *, late_after_s: float = LATE_AFTER_S, lost_after_s: float = LOST_AFTER_S) -> Outcome:
    """The fate of one utterance."""
    if u.first_audio is None or u.first_audio < u.voice_end:
        return Outcome(False, False, None, None)
    waited = u.first_audio - u.voice_end
    if waited > lost_after_s or (u.next_start is not None and u.first_audio >= u.next_start):
        return Outcome(False, False, None, None)
    v2v_ms = 1000 * waited
    overhead = None
    if u.member_final_ms is not None and u.llm_ttft_ms is not None and u.tts_ttfa_ms is not None:
        overhead = v2v_ms - u.member_final_ms - u.llm_ttft_ms - u.tts_ttfa_ms
    return Outcome(True, waited > late_after_s, v2v_ms, overhead)


def percentile(values: Iterable[float], pct: float) -> float | None:
    """Nearest rank (the smallest value with ``pct`` % at or below it), to 0.1; ``None`` when empty, never 0."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return round(ordered[min(rank, len(ordered)) - 1], 1)


def ratio_interval(
    reference: Sequence[float], measured: Sequence[float], pct: float, *, level: float = 0.9, draws: int = 2000,
) -> tuple[float, float] | None:
    """Bootstrap interval of ``percentile(measured, pct) / percentile(reference, pct)``: each draw
    resamples both sets of turns with replacement. With 20 or 40 turns a p95 is one of the slowest
    two, so one run's ratio is a draw from this spread, not the ratio itself. Seeded: the same
    turns give the same interval. ``None`` when either set is empty."""
    if not reference or not measured:
        return None
    rng = random.Random(0)
    ratios = sorted(
        (percentile(rng.choices(measured, k=len(measured)), pct) or 0.0)
        / (percentile(rng.choices(reference, k=len(reference)), pct) or 1.0)
        for _ in range(draws)
    )
    tail = (1 - level) / 2
    return round(ratios[int(tail * draws)], 2), round(ratios[min(draws - 1, int((1 - tail) * draws))], 2)


def next_starts(starts: Sequence[float]) -> list[float | None]:
    """Each utterance's ``next_start`` from the start times of one kiosk's utterances, in order."""
    return [*starts[1:], None]


def match_agent_turn(
    voice_end: float, first_audio: float | None, agent_turns: Iterable[dict[str, Any]]
) -> dict[str, Any] | None:
    """The agent turn that the kiosk heard as the answer: the last one whose first frame went out
    (``playout_at``) after the member's voice ended and before the kiosk heard agent audio.

    Both clocks must be one (``time.time()`` on one host); ``SAME_ONSET_S`` of slack for the
    readings' granularity. ``None`` when no turn fits (no answer, or no record received).
    """
    if first_audio is None:
        return None
    fits = [
        t for t in agent_turns
        if t.get("playout_at") is not None and voice_end - SAME_ONSET_S <= t["playout_at"] <= first_audio + SAME_ONSET_S
    ]
    return max(fits, key=lambda t: t["playout_at"], default=None)


def summarize_kiosks(
    kiosks: Iterable[tuple[Sequence[Utterance], Iterable[float]]],
    *,
    never_spoken: int = 0,
    late_after_s: float = LATE_AFTER_S,
    lost_after_s: float = LOST_AFTER_S,
) -> dict[str, Any]:
    """:func:`summarize` over several kiosks: each kiosk's onsets are matched with its own answers
    only (clocks and rooms differ), then counts add up and percentiles pool every answered turn."""
    pooled: list[Utterance] = []
    junk = 0
    for utterances, onsets in kiosks:
        pooled.extend(utterances)
        junk += summarize(utterances, onsets, late_after_s=late_after_s, lost_after_s=lost_after_s)["junk_answers"]
    out = summarize(pooled, never_spoken=never_spoken, late_after_s=late_after_s, lost_after_s=lost_after_s)
    out["junk_answers"] = junk
    return out


def summarize(
    utterances: Sequence[Utterance],
    agent_onsets: Iterable[float] = (),
    *,
    never_spoken: int = 0,
    late_after_s: float = LATE_AFTER_S,
    lost_after_s: float = LOST_AFTER_S,
) -> dict[str, Any]:
    """Counts and percentiles over one set of utterances (one level of a bench, say)."""
    fates = [outcome(u, late_after_s=late_after_s, lost_after_s=lost_after_s) for u in utterances]
    answered = [(u, f) for u, f in zip(utterances, fates, strict=True) if f.answered]
    answers = [u.first_audio for u, _ in answered if u.first_audio is not None]
    junk = sum(1 for t in agent_onsets if not any(abs(t - a) <= SAME_ONSET_S for a in answers))
    finals = [u.member_final_ms for u, _ in answered if u.member_final_ms is not None]
    v2v = [f.v2v_ms for _, f in answered if f.v2v_ms is not None]
    overhead = [f.overhead_ms for _, f in answered if f.overhead_ms is not None]
    return {
        "turns": len(utterances) + never_spoken,
        "answered": len(answered),
        "late_turns": sum(1 for _, f in answered if f.late),
        "lost_turns": len(utterances) - len(answered) + never_spoken,
        "junk_answers": junk,
        "v2v_ms_p50": percentile(v2v, 50),
        "v2v_ms_p95": percentile(v2v, 95),
        "overhead_ms_p50": percentile(overhead, 50),
        "overhead_ms_p95": percentile(overhead, 95),
        "member_final_ms_p50": percentile(finals, 50),
    }
