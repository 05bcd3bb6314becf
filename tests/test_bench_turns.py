"""The benches' turn arithmetic (bench/turns.py) on synthetic turns, figures worked out by hand."""

from __future__ import annotations

import json
from typing import Any

from bench.turns import (
    Utterance,
    match_agent_turn,
    next_starts,
    outcome,
    percentile,
    ratio_interval,
    summarize,
    summarize_kiosks,
)


def test_overhead_is_computed_per_turn() -> None:
    # v2v 1.2 s; the member's final came 400 ms after the voice ended; LLM 250 ms, TTS 300 ms:
    # 1200 - 400 - 250 - 300 = 250 ms left for turn handling and transport.
    u = Utterance(voice_end=100.0, next_start=110.0, first_audio=101.2, member_final_ms=400.0,
                  llm_ttft_ms=250.0, tts_ttfa_ms=300.0)
    fate = outcome(u)
    assert fate.answered and not fate.late
    assert round(fate.v2v_ms or 0, 6) == 1200.0
    assert round(fate.overhead_ms or 0, 6) == 250.0


def test_overhead_percentiles_come_from_per_turn_values_not_from_medians_of_stages() -> None:
    turns = [
        # v2v 1000, final 300, llm 200, tts 100 -> 400
        Utterance(0.0, 20.0, 1.0, 300.0, 200.0, 100.0),
        # v2v 2000, final 300, llm 1200, tts 100 -> 400
        Utterance(20.0, 40.0, 22.0, 300.0, 1200.0, 100.0),
        # v2v 1500, final 300, llm 200, tts 900 -> 100
        Utterance(40.0, None, 41.5, 300.0, 200.0, 900.0),
    ]
    summary = summarize(turns)
    # medians of parts would give 1500 - 300 - 200 - 100 = 900: not what any turn had
    assert summary["overhead_ms_p50"] == 400.0
    assert summary["overhead_ms_p95"] == 400.0
    assert summary["v2v_ms_p50"] == 1500.0 and summary["v2v_ms_p95"] == 2000.0


def test_a_turn_without_all_stage_times_has_no_overhead() -> None:
    summary = summarize([Utterance(0.0, None, 0.8, member_final_ms=300.0, llm_ttft_ms=None, tts_ttfa_ms=100.0)])
    assert summary["answered"] == 1 and summary["v2v_ms_p50"] == 800.0
    assert summary["overhead_ms_p50"] is None


def test_an_all_lost_run_reports_null_figures_never_zero() -> None:
    turns = [Utterance(0.0, 15.0, None), Utterance(15.0, 30.0, None), Utterance(30.0, None, None)]
    summary = summarize(turns, never_spoken=2)
    assert summary["turns"] == 5
    assert summary["lost_turns"] == summary["turns"]
    assert summary["answered"] == 0 and summary["late_turns"] == 0
    for key in ("v2v_ms_p50", "v2v_ms_p95", "overhead_ms_p50", "overhead_ms_p95", "member_final_ms_p50"):
        assert summary[key] is None, key
    assert '"v2v_ms_p50": null' in json.dumps(summary)


def test_late_and_lost_boundaries() -> None:
    assert not outcome(Utterance(0.0, None, 3.0)).late  # exactly 3 s: answered in time
    assert outcome(Utterance(0.0, None, 3.001)).late  # over 3 s: late, still answered
    assert outcome(Utterance(0.0, None, 3.001)).answered
    assert outcome(Utterance(0.0, None, 10.0)).answered  # exactly 10 s: late but answered
    assert not outcome(Utterance(0.0, None, 10.001)).answered  # over 10 s: lost
    summary = summarize([Utterance(0.0, 20.0, 2.0), Utterance(20.0, 40.0, 25.0), Utterance(40.0, None, 55.0)])
    assert (summary["answered"], summary["late_turns"], summary["lost_turns"]) == (2, 1, 1)
    assert summary["v2v_ms_p50"] == 2000.0 and summary["v2v_ms_p95"] == 5000.0


def test_an_answer_after_the_next_utterance_began_counts_lost() -> None:
    # The member gave up after 2 s and spoke again; the answer came at 2.5 s, over her next sentence.
    first, second = Utterance(0.0, 2.0, 2.5), Utterance(4.0, None, 4.6)
    assert not outcome(first).answered
    summary = summarize([first, second], agent_onsets=[2.5, 4.6])
    assert summary["lost_turns"] == 1 and summary["answered"] == 1
    assert summary["v2v_ms_p50"] == 600.0  # the lost turn's 2.5 s is not a v2v sample
    # the late answer answered no pending utterance
    assert summary["junk_answers"] == 1


def test_junk_answers_are_onsets_that_answer_no_utterance() -> None:
    turns = [Utterance(10.0, 20.0, 10.8), Utterance(20.0, None, 20.9)]
    # 5.0: the agent answering a junk transcript of silence before the member spoke;
    # 10.79: the first answer (the onset reading differs by a frame); 15.0: junk again.
    summary = summarize(turns, agent_onsets=[5.0, 10.79, 15.0, 20.9])
    assert summary["junk_answers"] == 2
    assert summary["answered"] == 2 and summary["lost_turns"] == 0


def test_helpers() -> None:
    assert next_starts([1.0, 5.0, 9.0]) == [5.0, 9.0, None]
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0


def test_an_agent_turn_is_matched_by_when_its_audio_went_out() -> None:
    turns = [{"speech_id": "a", "playout_at": 9.0}, {"speech_id": "b", "playout_at": 10.6},
             {"speech_id": "c", "playout_at": 14.0}]
    assert match_agent_turn(10.0, 10.7, turns) == turns[1]
    assert match_agent_turn(10.0, None, turns) is None
    assert match_agent_turn(11.0, 12.0, turns) is None  # the audio heard is no turn we know


def test_onsets_of_one_kiosk_never_match_another_kiosks_answers() -> None:
    kiosk_a = ([Utterance(0.0, None, 1.0)], [1.0])
    kiosk_b = ([Utterance(0.0, None, None)], [1.0])  # b's agent spoke at 1.0 answering nothing
    summary = summarize_kiosks([kiosk_a, kiosk_b], never_spoken=1)
    assert summary["junk_answers"] == 1
    assert (summary["turns"], summary["answered"], summary["lost_turns"]) == (3, 1, 2)


def test_voice_loop_matches_each_utterance_with_the_agents_own_turn_record() -> None:
    from bench.voice_loop import turn_figures

    def utt(started: float, end: float, heard: float | None, final: float | None) -> dict[str, Any]:
        return {"started": started, "voice_end": end, "first_audio": heard, "member_final": final,
                "overlapped": False}

    record = {
        "ready": True, "junk_transcripts": 0, "onsets": [101.2, 111.0],
        "utterances": [utt(98.0, 100.0, 101.2, 100.4), utt(108.0, 110.0, None, 110.5)],
        # 101.15: the answer's first frame went out, 50 ms before the kiosk heard it
        "agent_turns": [{"speech_id": "s1", "playout_at": 101.15, "llm_ttft_ms": 250.0, "tts_ttfa_ms": 300.0,
                         "end_of_turn_ms": 5.0, "stt_final_ms": 2.0}],
    }
    figures, stages = turn_figures([record, {"ready": False, "utterances": [], "onsets": [], "agent_turns": [],
                                             "junk_transcripts": 0}], never_spoken=2)
    assert (figures["turns"], figures["answered"], figures["lost_turns"], figures["junk_answers"]) == (4, 1, 3, 1)
    assert figures["overhead_ms_p50"] == 250.0  # 1200 - 400 - 250 - 300
    assert stages["llm_first_token"] == [250.0] and [round(t) for t in stages["transport"]] == [50]


def test_per_session_cost_is_the_slope_not_total_over_n() -> None:
    from bench.voice_loop import add_cost_fit

    rows = [{"sessions": n, "failed_sessions": 0, "cpu_pct_total": 20.0 + 15.0 * n, "rss_mb_total": 300.0 + 100.0 * n,
             "uss_mb_total": 150.0 + 40.0 * n} for n in (1, 4)]  # fmt: skip
    top = add_cost_fit({"cpu_pct": 20.0, "rss_mb": 300.0, "uss_mb": 150.0}, rows)
    assert top == {"cpu_pct_fixed": 20.0, "cpu_pct_per_session_slope": 15.0, "rss_mb_fixed": 300.0,
                   "rss_mb_per_session_slope": 100.0, "uss_mb_fixed": 150.0, "uss_mb_per_session_slope": 40.0}
    assert [r["cpu_pct_per_session"] for r in rows] == [15.0, 15.0]
    assert [r["rss_mb_per_session"] for r in rows] == [100.0, 100.0]
    assert [r["uss_mb_per_session"] for r in rows] == [40.0, 40.0]


def test_a_p95_ratio_from_twenty_turns_comes_with_its_spread() -> None:
    """One slow turn in twenty sets a p95: the interval says how far one run's ratio can stray."""
    half = [500.0] * 19 + [700.0]
    same = [500.0] * 38 + [700.0] * 2
    low, high = ratio_interval(half, same, 95) or (0.0, 0.0)
    assert low < 1.0 < high  # the same sessions, and one run could read 0.71 or 1.4
    assert ratio_interval(half, same, 95) == (low, high)  # seeded: the same turns, the same interval
    steady = [500.0] * 19 + [520.0]
    slower = [650.0] * 38 + [900.0] * 2
    low, _ = ratio_interval(steady, slower, 95) or (0.0, 0.0)
    assert low > 1.2  # clearly slower at full load, whichever turns were drawn
    assert ratio_interval([], slower, 95) is None


def test_a_level_reports_how_long_the_jitter_buffers_held_the_audio() -> None:
    from bench.voice_loop import jitter_buffers

    def buffer(ms: float) -> dict[str, Any]:
        return {"mean_delay_ms": ms, "target_delay_ms": 20.0, "emitted_samples": 48_000, "concealed_samples": 0}

    kiosk_a = {"agent_turns": [{"member_audio_jitter": [buffer(90.0)]}, {"member_audio_jitter": [buffer(30.0)]}],
               "answer_audio_jitter": [buffer(20.0)]}
    kiosk_b = {"agent_turns": [{"member_audio_jitter": [buffer(40.0)]}], "answer_audio_jitter": [buffer(40.0)]}
    never_answered = {"agent_turns": [], "answer_audio_jitter": []}
    # Each session's last record holds its whole visit so far: the earlier 90 ms is in it already.
    assert jitter_buffers([kiosk_a, kiosk_b, never_answered]) == {
        "member_jitter_buffer_ms": 35.0, "answer_jitter_buffer_ms": 30.0}
    assert jitter_buffers([never_answered]) == {"member_jitter_buffer_ms": None, "answer_jitter_buffer_ms": None}


def test_the_cores_split_names_the_group_that_took_them() -> None:
    from bench.voice_loop import cores_pct

    before = {"worker": 10.0, "engines": 5.0, "kiosks": 0.0, "sfu": 1.0}
    after = {"worker": 10.6, "engines": 5.4, "kiosks": 1.0, "sfu": 1.1}
    assert cores_pct(before, after, 2.0) == {"worker": 30.0, "engines": 20.0, "kiosks": 50.0, "sfu": 5.0,
                                             "total": 105.0}


def test_a_process_spinning_on_a_core_shows_in_its_group_and_in_the_host() -> None:
    import subprocess
    import sys
    import time

    from bench.voice_loop import cores_pct, sample_cores

    spin = "import time\nend = time.time() + 3\nwhile time.time() < end: pass"
    spinner = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # past the interpreter's start
        groups = {"spinner": [spinner.pid]}
        before, t0 = sample_cores(groups), time.perf_counter()
        time.sleep(1.5)
        shares = cores_pct(before, sample_cores(groups), time.perf_counter() - t0)
    finally:
        spinner.kill()
        spinner.wait()
    assert 50 < shares["spinner"] <= 105, shares
    assert shares["bench"] < 50, shares  # the test's own process slept: the spinner is not counted twice
    assert shares["total"] == round(shares["spinner"] + shares["bench"], 1), shares
