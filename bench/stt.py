"""STT engine benchmark: `python -m bench.stt [--quick] [--weights tiny|real-size-random]`.

For each load level (1, 2, 4, 8, 16, 32 streams; --quick keeps 1 and 32) it starts the engine
server in this process with that many slots, streams speech-like audio from as many
Kyutai-protocol clients in real time, and reports the batched step time, the real-time factor
(step time / 80 ms: below 1 the batch keeps up with real time) and the streaming state each
extra stream costs. Then, through the LiveKit plugin, the time from the last voiced sample to
END_OF_SPEECH and to FINAL_TRANSCRIPT (end of turn from the pause head, then the flush).

Weights: `tiny` (default, CPU friendly) or `real-size-random` (the real model's shapes with random
weights, for a GPU machine; about 1B parameters). Without a GPU, `--weights real-size-random` is
slow. Timings never fail the run; it exits non-zero only when it could not run.
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
from kyutai_stt.engine import StepStats, SttEngine
from kyutai_stt.server import build_server
from kyutai_stt.settings import EngineSettings
from kyutai_tiny.common import synthetic_speech
from kyutai_tiny.stt import write_tiny_stt

from bench.common import emit, percentile, progress

FRAME = 1920
FRAME_S = 0.08
LEVELS = [1, 2, 4, 8, 16, 32]


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
    async with websockets.connect(f"{url}/api/asr-streaming?auth_id=public_token") as ws:
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


def engine_step_seconds(engine: SttEngine, steps: int = 20) -> float:
    """Median time of a full-batch step on the engine alone (its slots are freed afterwards)."""
    slots = [engine.open_slot() for _ in range(engine.max_streams)]
    frames = {slot: synthetic_speech(0.08, seed=slot)[:FRAME] for slot in slots if slot is not None}
    times = []
    for _ in range(steps):
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        engine.step(frames)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    for slot in slots:
        if slot is not None:
            engine.close_slot(slot)
    return statistics.median(times[2:])


async def run_clients(url: str, streams: int, seconds: float) -> None:
    audios = [np.concatenate([synthetic_speech(seconds, seed=i), np.zeros(FRAME, np.float32)]) for i in range(streams)]
    await asyncio.gather(*(stream_client(url, audio, 0.005 * i) for i, audio in enumerate(audios)))


async def load_level(checkpoint_dir: Path, device: str, streams: int, seconds: float) -> dict[str, Any]:
    settings = EngineSettings(checkpoint=str(checkpoint_dir), port=0, max_streams=streams, device=device)
    server = build_server(settings)
    engine = server.engine
    engine_alone = engine_step_seconds(engine)
    step_times: list[float] = []
    fills: list[float] = []
    original_step = engine.step

    def timed_step(frames: dict[int, np.ndarray]) -> tuple[dict[int, Any], StepStats]:
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        outputs, stats = original_step(frames)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()
        fills.append(stats.active / streams)
        # Only full batches: the partly filled steps while clients join and leave are not the load.
        if stats.active == streams:
            step_times.append(stats.seconds)
        return outputs, stats

    engine.step = timed_step  # type: ignore[method-assign]
    await server.start()
    url = f"ws://127.0.0.1:{server.port}"
    try:
        # The clients run in their own process: in this one they would compete with the server
        # for the interpreter lock and the measured step times would be theirs too.
        clients = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.stt", "--clients", url, str(streams), str(seconds)
        )
        if await clients.wait() != 0:
            raise RuntimeError("the benchmark clients failed")
    finally:
        await server.stop()
    per_stream = state_bytes(engine) / streams / 2**20
    if not step_times:
        step_times = [float("nan")]
    row = {
        "streams": streams,
        "step_ms_p50": round(percentile(step_times, 50) * 1000, 3),
        "step_ms_p99": round(percentile(step_times, 99) * 1000, 3),
        "rtf": round(statistics.fmean(step_times) / FRAME_S, 4),
        "mem_per_stream_mb": round(per_stream, 4),
        "full_steps": len(step_times),
        "batch_fill_pct": round(100 * statistics.fmean(fills), 1) if fills else 0.0,
        # The same full batch stepped directly, without the server and its clients around it.
        "engine_step_ms_p50": round(engine_alone * 1000, 3),
    }
    progress(f"stt bench: {row}")
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
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    levels = [LEVELS[0], LEVELS[-1]] if args.quick else LEVELS
    if args.levels:
        levels = [int(n) for n in args.levels.split(",")]
    seconds = args.seconds or (3.0 if args.quick else 8.0)
    with tempfile.TemporaryDirectory(prefix="bench-stt-") as tmp:
        if args.checkpoint:
            checkpoint_dir = Path(args.checkpoint)
        else:
            progress(f"stt bench: writing a {args.weights} checkpoint")
            checkpoint_dir = write_tiny_stt(Path(tmp), real_size=args.weights == "real-size-random").parent
        rows = [await load_level(checkpoint_dir, device, n, seconds) for n in levels]
        eos_ms, final_ms = await turn_latency(checkpoint_dir, device, args.turns or (2 if args.quick else 5))
    ratio = rows[-1]["step_ms_p50"] / rows[0]["step_ms_p50"] if rows[0]["step_ms_p50"] else None
    within = [row["streams"] for row in rows if row["step_ms_p99"] < FRAME_S * 1000]
    return emit(
        "stt",
        weights="real" if args.checkpoint else args.weights,
        quick=args.quick,
        results=rows,
        eos_after_voice_ms=eos_ms,
        final_after_voice_ms=final_ms,
        step_cost_ratio_max_vs_1=round(ratio, 3) if ratio else None,
        # The most streams measured whose p99 step fits in the 80 ms frame.
        max_streams_within_frame=max(within) if within else 0,
        audio_seconds_per_stream=seconds,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 and 32 streams, short audio")
    parser.add_argument("--weights", choices=["tiny", "real-size-random"], default="tiny")
    parser.add_argument("--checkpoint", help="a real checkpoint directory instead of random weights")
    parser.add_argument("--levels", help="comma-separated stream counts, e.g. 1,64,128")
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
