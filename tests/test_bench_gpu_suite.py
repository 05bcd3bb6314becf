"""The GPU suite gathers its three benches into one JSON: each row keeps its bench's keys plus
`bench`, a bench that could not run is named in `failed` while the others still count."""

from __future__ import annotations

from bench.gpu import Step, merge, plan


def test_a_stalled_bench_is_named_and_the_others_rows_are_kept() -> None:
    stt, tts, voice = plan(quick=False)
    stt_result = {"bench": "stt", "weights": "real-size-random", "results": [{"streams": 1, "rtf": 0.1}],
                  "eos_after_voice_ms": 200.0}  # fmt: skip
    voice_result = {"bench": "voice_loop", "weights": "tiny", "results": [{"sessions": 20, "lost_turns": 0}]}

    merged = merge([
        (stt, stt_result, None, 5200.0),
        (tts, None, "tts: over its 126 s share of the budget", 9100.0),
        (voice, voice_result, None, None),
    ])  # fmt: skip

    assert merged["results"] == [
        {"bench": "stt", "streams": 1, "rtf": 0.1},
        {"bench": "voice_loop", "sessions": 20, "lost_turns": 0},
    ]
    assert merged["failed"] == ["tts: over its 126 s share of the budget"]
    assert merged["summaries"]["stt"] == {"eos_after_voice_ms": 200.0}
    assert merged["gpu_mem_mb"] == {"stt": 5200.0, "tts": 9100.0, "voice_loop": None}


def test_the_full_suite_sweeps_1_to_256_streams_and_20_to_64_sessions_within_its_budget() -> None:
    steps = {step.bench: step for step in plan(quick=False)}
    assert "real-size-random" in steps["stt"].args and "--real-size" in steps["tts"].args
    for engine in ("stt", "tts"):
        levels = steps[engine].args[steps[engine].args.index("--levels") + 1]
        assert levels.split(",")[0] == "1" and levels.split(",")[-1] == "256"
    assert steps["voice_loop"].args[steps["voice_loop"].args.index("--sessions") + 1] == "20,40,64"
    assert abs(sum(step.share for step in steps.values()) - 1.0) < 1e-9
    assert all(isinstance(step, Step) for step in plan(quick=True))
