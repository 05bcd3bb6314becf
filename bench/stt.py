"""STT engine benchmark: `python -m bench.stt [--quick] [--capacity C] [--weights tiny|real-size-random]`.

One engine server of fixed capacity C (`--capacity`, default 32 slots), as deployed: it computes
all C slots at every step whatever the number of live streams. For each level of ACTIVE streams
(1, 2, 4, 8, 16, 32 clipped to C, doubling on up to C when it is larger; --quick keeps the
smallest and the largest) that many Kyutai-protocol clients stream speech-like audio in real
time. Each row (`streams` = `active`) reports, over the steps where every active stream had a
frame (`steps_measured`; when there is none, every step of the level and `fallback: true`):
the step time, the real-time factor (mean step / 80 ms: below 1 the batch keeps up), the
`batch_fill_pct` (live slots / C over those steps), the streaming state per slot, and the same
step on the engine alone (`engine_step_ms_p50`, no server or clients).

Top level, as `bench/capacity.py` defines them: `active_stream_cost_ms` (slope of step_ms_p50
over active at fixed C), `idle_slot_cost_ms` (1 active on C slots against 1 active on an engine
of capacity 1, per idle slot), `skip_idle_slots_saves_pct` at 1 and C/4 active (the step an
engine sized to the live streams would save; both sides on the engine alone, measured in
alternation), then, through the LiveKit plugin, the time from the last voiced sample to
END_OF_SPEECH and to FINAL_TRANSCRIPT (end of turn from the pause head, then the flush).

Weights: `tiny` (default, CPU friendly) or `real-size-random` (the real model's shapes with random
weights, for a GPU machine, e.g. `--capacity 256`; about 1B parameters). Without a GPU,
`--weights real-size-random` is slow. Timings are noisy on a shared CPU and never fail the run;
it exits non-zero only when it could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import msgpack
import numpy as np
import torch
import websockets
from kyutai_stt.engine import StepStats, SttEngine, load_checkpoint
from kyutai_stt.server import build_server
from kyutai_stt.settings import EngineSettings
from kyutai_tiny.common import synthetic_speech
from kyutai_tiny.stt import write_tiny_stt

from bench.capacity import (
    DEFAULT_CAPACITY,
    active_levels,
    fill_pct,
    measured_steps,
    skip_idle_entry,
    skip_idle_points,
    summary,
)
from bench.common import emit, livekit_agents_installed, percentile, progress, row_measured

FRAME = 1920
FRAME_S = 0.08


def state_bytes(engine: SttEngine) -> int:
    """Bytes of every tensor in the streaming state of Mimi and the LM (caches, buffers, offsets)."""
    seen: set[int] = set()
    total = 0

    def visit(value: Any, depth: int = 0) -> None:
        nonlocal total
        if depth > 6 or id(value) in seen:
            return
        seen.add(id(value))
        if isinstance(value, torch.Tensor):
            total += value.numel() * value.element_size()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif isinstance(value, list | tuple):
            for item in value:
                visit(item, depth + 1)
        elif dataclasses.is_dataclass(value) or hasattr(value, "__dict__"):
            if isinstance(value, torch.nn.Module):
                return
            for item in vars(value).values():
                visit(item, depth + 1)

    for module in (engine.mimi, engine.lm_gen, engine.lm_gen.lm_model):
        visit(module.get_streaming_state())
    return total


async def stream_client(url: str, audio: np.ndarray, start_delay: float) -> None:
    """A Kyutai-protocol client sending `audio` in real time, reading everything it gets."""
    await asyncio.sleep(start_delay)
    async with websockets.connect(f"{url}/api/asr-streaming") as ws:
        await ws.recv()

        async def reader() -> None:
            async for _ in ws:
                pass

        reading = asyncio.create_task(reader())
        started = time.perf_counter()
        for index, start in enumerate(range(0, len(audio) - FRAME + 1, FRAME)):
            frame = audio[start : start + FRAME]
            await ws.send(msgpack.packb({"type": "Audio", "pcm": frame.tolist()}, use_single_float=True))
            delay = started + (index + 1) * FRAME_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        reading.cancel()


def timed_step(engine: SttEngine, frames: dict[int, np.ndarray]) -> float:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    engine.step(frames)
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def live_frames(engine: SttEngine, active: int) -> dict[int, np.ndarray]:
    """Open `active` slots (the caller closes them) and give each a frame of speech-like audio."""
    slots = [engine.open_slot() for _ in range(active)]
    return {slot: synthetic_speech(0.08, seed=slot)[:FRAME] for slot in slots if slot is not None}


def engine_step_seconds(engine: SttEngine, active: int, steps: int = 30) -> float:
    """Median time of a step with `active` slots carrying audio, on the engine alone (outside the
    server, before it starts); the slots are freed afterwards."""
    frames = live_frames(engine, active)
    times = [timed_step(engine, frames) for _ in range(steps)]
    for slot in frames:
        engine.close_slot(slot)
    return statistics.median(times[2:])


def skip_idle_seconds(
    checkpoint_dir: Path, device: str, capacity: int, active: int, steps: int = 60
) -> tuple[float, float]:
    """Median step time with `active` live slots on an engine of `capacity` slots and on one of
    `active` slots (a batch of only the live slots). The two engines step in turn, one step each,
    so that the load of a shared machine falls on both alike."""
    full = SttEngine(load_checkpoint(str(checkpoint_dir), device), capacity)
    sized = SttEngine(load_checkpoint(str(checkpoint_dir), device), active)
    full.warmup(2)
    sized.warmup(2)
    full_frames, sized_frames = live_frames(full, active), live_frames(sized, active)
    full_times: list[float] = []
    sized_times: list[float] = []
    for _ in range(steps):
        full_times.append(timed_step(full, full_frames))
        sized_times.append(timed_step(sized, sized_frames))
    return statistics.median(full_times[2:]), statistics.median(sized_times[2:])


async def run_clients(url: str, streams: int, seconds: float) -> None:
    audios = [np.concatenate([synthetic_speech(seconds, seed=i), np.zeros(FRAME, np.float32)]) for i in range(streams)]
    await asyncio.gather(*(stream_client(url, audio, 0.005 * i) for i, audio in enumerate(audios)))


async def capacity_levels(
    checkpoint_dir: Path, device: str, capacity: int, levels: list[int], seconds: float
) -> list[dict[str, Any]]:
    """One server of `capacity` slots, as deployed, serving `active` real-time clients per level."""
    settings = EngineSettings(checkpoint=str(checkpoint_dir), port=0, max_streams=capacity, device=device)
    server = build_server(settings)
    engine = server.engine
    engine_alone = {active: engine_step_seconds(engine, active) for active in levels}
    per_slot_mb = state_bytes(engine) / capacity / 2**20
    records: list[tuple[int, float]] = []  # (active slots, seconds) of every step of the level
    original_step = engine.step

    def timed_step(frames: dict[int, np.ndarray]) -> tuple[dict[int, Any], StepStats]:
        outputs, stats = original_step(frames)  # its seconds end after the tokens reach the CPU
        records.append((stats.active, stats.seconds))
        return outputs, stats

    engine.step = timed_step  # type: ignore[method-assign]
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    rows = []
    try:
        for active in levels:
            records.clear()
            # The clients run in their own process: in this one they would compete with the
            # server for the interpreter lock and the measured step times would be theirs too.
            clients = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bench.stt", "--clients", url, str(active), str(seconds)
            )
            if await clients.wait() != 0:
                raise RuntimeError("the benchmark clients failed")
            for _ in range(100):  # the next level starts on free slots
                if not server.streams:
                    break
                await asyncio.sleep(0.05)
            rows.append(level_row(capacity, active, list(records), per_slot_mb, engine_alone[active]))
    finally:
        await server.stop()
    return rows


def level_row(
    capacity: int, active: int, records: list[tuple[int, float]], per_slot_mb: float, engine_alone: float
) -> dict[str, Any]:
    step_times, actives, fallback = measured_steps(records, active)
    if not step_times:
        step_times = [float("nan")]
    row = {
        "streams": active,
        "capacity": capacity,
        "active": active,
        "batch_fill_pct": fill_pct(actives, capacity),
        "step_ms_p50": round(percentile(step_times, 50) * 1000, 3),
        "step_ms_p99": round(percentile(step_times, 99) * 1000, 3),
        "rtf": round(statistics.fmean(step_times) / FRAME_S, 4),
        # Streaming state is allocated per slot, for every slot of the capacity.
        "mem_per_stream_mb": round(per_slot_mb, 4),
        "steps_measured": len(actives),
        "steps_total": len(records),
        # True: no step had every stream live, so every step of the level was measured.
        "fallback": fallback,
        # A step with `active` slots carrying audio, on the engine alone (no server, no clients).
        "engine_step_ms_p50": round(engine_alone * 1000, 3),
    }
    row_measured(row)
    return row


async def one_turn(url: str, trial: int) -> tuple[float, float] | None:
    """One member's turn through the plugin, in real time: (ms to END_OF_SPEECH, ms to FINAL)
    from the last voiced sample, or None when the turn was not detected."""
    from kyutai_stt import STT
    from livekit import rtc
    from livekit.agents import APIConnectOptions
    from livekit.agents.stt import SpeechEventType

    voice = synthetic_speech(1.6, seed=100 + trial)
    voice[-FRAME:] *= np.linspace(1, 0, FRAME, dtype=np.float32)  # the last voiced frame fades out
    pcm = (np.concatenate([voice, np.zeros(24000 * 4, np.float32)]) * 32767).astype(np.int16)
    stream = STT(url=url).stream(conn_options=APIConnectOptions(max_retry=0))
    last_voice_at: float | None = None
    final_at: float | None = None

    async def push() -> None:
        nonlocal last_voice_at
        started = time.perf_counter()
        for index, start in enumerate(range(0, len(pcm) - FRAME + 1, FRAME)):
            stream.push_frame(rtc.AudioFrame(pcm[start : start + FRAME].tobytes(), 24000, 1, FRAME))
            if start + FRAME >= len(voice) and last_voice_at is None:
                last_voice_at = time.perf_counter()
            delay = started + (index + 1) * FRAME_S - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)

    pusher = asyncio.create_task(push())
    try:
        async for event in stream:
            if last_voice_at is None:
                continue  # a turn ended on a mid-sentence pause: not the one measured
            if event.type == SpeechEventType.FINAL_TRANSCRIPT and final_at is None:
                final_at = time.perf_counter()
            if event.type == SpeechEventType.END_OF_SPEECH:
                eos_at = time.perf_counter()
                if final_at is None:
                    return None
                return (eos_at - last_voice_at) * 1000, (final_at - last_voice_at) * 1000
        return None
    finally:
        pusher.cancel()
        await stream.aclose()


async def turn_latency(checkpoint_dir: Path, device: str, trials: int) -> tuple[float, float]:
    """Median over turns of the time from the last voiced sample to END_OF_SPEECH and to FINAL."""
    settings = EngineSettings(checkpoint=str(checkpoint_dir), port=0, max_streams=1, device=device)
    server = build_server(settings)
    await server.start()
    eos_ms: list[float] = []
    final_ms: list[float] = []
    try:
        for trial in range(trials):
            measured = await asyncio.wait_for(one_turn(f"ws://127.0.0.1:{server.port}", trial), timeout=30)
            if measured is not None:
                eos_ms.append(measured[0])
                final_ms.append(measured[1])
            progress(f"stt bench: turn {trial}: (eos_ms, final_ms) = {measured}")
    finally:
        await server.stop()
    return (
        round(statistics.median(eos_ms), 1) if eos_ms else -1.0,
        round(statistics.median(final_ms), 1) if final_ms else -1.0,
    )


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        threads = int(os.environ.get("BENCH_THREADS", "0")) or max(1, min(2, os.cpu_count() or 1))
        torch.set_num_threads(threads)
    capacity = args.capacity
    levels = active_levels(capacity, args.quick, args.levels)
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    with tempfile.TemporaryDirectory(prefix="bench-stt-") as tmp:
        if args.checkpoint:
            checkpoint_dir = Path(args.checkpoint)
        else:
            progress(f"stt bench: writing a {args.weights} checkpoint")
            checkpoint_dir = write_tiny_stt(Path(tmp), real_size=args.weights == "real-size-random").parent
        rows = await capacity_levels(checkpoint_dir, device, capacity, levels, seconds)
        skip_idle = []
        for active in skip_idle_points(capacity):
            # Both sides on the engine alone, so the server's batching does not enter the comparison.
            full, sized = skip_idle_seconds(checkpoint_dir, device, capacity, active)
            skip_idle.append(skip_idle_entry(capacity, active, full * 1000, sized * 1000))
            progress(f"stt bench: skip idle slots: {skip_idle[-1]}")
        eos_ms: float | None = None
        final_ms: float | None = None
        if livekit_agents_installed():
            eos_ms, final_ms = await turn_latency(checkpoint_dir, device, args.turns or (2 if args.quick else 5))
        else:
            progress("stt bench: livekit-agents is not installed here: no turn timed through the plugin")
    ratio = rows[-1]["step_ms_p50"] / rows[0]["step_ms_p50"] if rows[0]["step_ms_p50"] else None
    within = [row["active"] for row in rows if row["step_ms_p99"] < FRAME_S * 1000]
    return emit(
        "stt",
        weights="real" if args.checkpoint else args.weights,
        quick=args.quick,
        results=rows,
        eos_after_voice_ms=eos_ms,
        final_after_voice_ms=final_ms,
        **summary(capacity, rows, skip_idle),
        # The step with the most active streams measured against one active, at the same capacity.
        step_cost_ratio_max_vs_1=round(ratio, 3) if ratio else None,
        # The most active streams measured whose p99 step fits in the 80 ms frame.
        max_streams_within_frame=max(within) if within else 0,
        audio_seconds_per_stream=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and `capacity` active streams, short audio")
    parser.add_argument(
        "--capacity", type=int, default=DEFAULT_CAPACITY, help="slots of the engine, fixed for every level"
    )
    parser.add_argument("--weights", choices=["tiny", "real-size-random"], default="tiny")
    parser.add_argument("--checkpoint", help="a real checkpoint directory instead of random weights")
    parser.add_argument("--levels", help="comma-separated active stream counts, e.g. 1,64,128")
    parser.add_argument("--seconds", type=float, help="audio per stream at each level (3 quick, 8 full)")
    parser.add_argument("--turns", type=int, help="turns timed through the plugin (2 quick, 5 full)")
    parser.add_argument("--clients", nargs=3, metavar=("URL", "STREAMS", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.clients:
        url, streams, seconds = args.clients
        asyncio.run(run_clients(url, int(streams), float(seconds)))
        return
    asyncio.run(main_async(args))


if __name__ == "__main__":
    main()
