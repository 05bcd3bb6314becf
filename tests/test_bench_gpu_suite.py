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


def test_a_bench_stopped_at_its_share_still_gives_the_rows_it_measured(tmp_path, monkeypatch) -> None:
    """The TTS bench of the first H200 run overran its share after four levels, and its rows were
    only in the log: a bench now appends each row to the suite's rows file as it is measured."""
    from bench.common import ROWS_FILE_ENV, partial_rows, row_measured

    rows_file = tmp_path / "rows.jsonl"
    monkeypatch.setenv(ROWS_FILE_ENV, str(rows_file))
    row_measured({"streams": 1, "step_ms_p50": 198.7})
    row_measured({"streams": 8, "step_ms_p50": 216.8}, echo=False)
    with rows_file.open("a") as out:
        out.write('{"streams": 32, "step_')  # the kill came in the middle of a line

    kept = partial_rows(rows_file)
    assert [row["streams"] for row in kept] == [1, 8]

    stt, tts, _voice = plan(quick=False)
    merged = merge([
        (stt, {"bench": "stt", "weights": "real-size-random", "results": [{"streams": 1}]}, None, None),
        (tts, {"results": kept, "partial": True}, "tts: over its 240 s share of the budget", 50521.0),
    ])  # fmt: skip
    assert [(row["bench"], row["streams"]) for row in merged["results"]] == [("stt", 1), ("tts", 1), ("tts", 8)]
    assert merged["failed"] == ["tts: over its 240 s share of the budget (2 rows kept)"]
    assert merged["summaries"]["tts"] == {"partial": True}
    assert partial_rows(tmp_path / "missing.jsonl") == []
