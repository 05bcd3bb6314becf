"""TTS engine benchmark: `python -m bench.tts [--quick] [--capacity C] [--real-size]`.

One engine of fixed capacity C (`--capacity`, default 32 slots), as deployed: it computes all C
slots at every step whatever the number of live streams. For each level of ACTIVE streams (1, 2,
4, 8, 16, 32 clipped to C, doubling on up to C when it is larger; quick: the smallest and the
largest) that many streams speak the same French answer, words fed as an LLM would. Each row
(`streams` = `active`) reports, over the steps that ran every active stream (`steps_measured` of
`steps_total`; when there is none, every step and `fallback: true`, also said on stderr): step
time (one batched LM step + Mimi decode), real-time factor (step p50 / 80 ms of audio each
stream gets per step), `batch_fill_pct` (live slots / C over those steps), time to first audio
after the first word, and the per-slot streaming state (`mem_mb` is the process's measured
growth, noisy on CPU).

Top level, as `bench/capacity.py` defines them: `active_stream_cost_ms` (slope of step_ms_p50
over active at fixed C), `idle_slot_cost_ms` (1 active on C slots against the same stream on an
engine of capacity 1, per idle slot), `skip_idle_slots_saves_pct` at 1 and C/4 active (what an
engine sized to the live streams saves per step; a level missing from the sweep is run for it).
On a GPU it first checks the depformer's CUDA graph (`graph_check`: tiny weights, three seeded
streams, the codes of a graphed engine against an eager one); `--no-cuda-graphs` runs the levels
eagerly, for comparison. Tiny random weights by default; `--real-size` builds random weights with the shapes of
kyutai/tts-1.6b-en_fr (meant for a GPU, e.g. `--capacity 256`). Timings are noisy on a shared
CPU; the bench never fails on timing.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_TORCH_COMPILE", "1")

import numpy as np
import torch

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

ANSWER = (
    "Bonjour Julie, le cours de yoga est à dix-huit heures, il reste trois places. "
    "Je te réserve une place avec le coach Karim ? Pense à prendre ta serviette et de l'eau."
)
FRAME_S = 0.08


@dataclass
class _Sink:
    started_at: float = 0.0
    first_audio_at: float | None = None
    frames: int = 0
    done: threading.Event = field(default_factory=threading.Event)
    error: str | None = None

    def audio(self, pcm: np.ndarray) -> None:
        if self.first_audio_at is None:
            self.first_audio_at = time.perf_counter()
        self.frames += 1

    def word(self, text: str, start_s: float, stop_s: float) -> None:
        pass

    def finished(self) -> None:
        self.done.set()

    def failed(self, error: Exception) -> None:
        self.error = str(error)
        self.done.set()


@dataclass
class _CodesSink(_Sink):
    """Also keeps each frame's audio codes (the engine sends them to a sink that has `codes`)."""

    frame_codes: list[np.ndarray] = field(default_factory=list)

    def codes(self, frame: np.ndarray) -> None:
        self.frame_codes.append(frame)


def graph_check(device: str, dtype: torch.dtype) -> dict[str, Any]:
    """On a GPU: the depformer replayed as a CUDA graph says exactly what it says eagerly. Three
    seeded streams (two sampled at different temperatures, one greedy) on tiny weights, once on an
    engine with graphs and once without; the codes must be equal, frame by frame."""
    from kyutai_tiny.tts import DEFAULT_VOICE, write_tiny_tts
    from kyutai_tts.engine import TTSEngine, load_voice_file

    words = ANSWER.split()[:12]
    outcome: dict[str, Any] = {}
    codes: dict[bool, list[list[np.ndarray]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-tts-graph-") as tmp:
        tiny = write_tiny_tts(Path(tmp))
        for graphs in (False, True):
            engine = TTSEngine(
                tiny.load(device=device, dtype=dtype),
                max_streams=4,
                default_voice=load_voice_file(tiny.voice_path(DEFAULT_VOICE)),
                default_cfg_alpha=2.0,
                cuda_graphs=graphs,
            )
            engine.warmup(3)
            engine.start()
            sinks = [_CodesSink() for _ in range(3)]
            try:
                for index, (sink, temperature) in enumerate(zip(sinks, (0.6, 0.0, 0.9), strict=True)):
                    handle = engine.open(sink, temperature=temperature, seed=7 + index)
                    for word in words:
                        handle.push_text(word)
                    handle.end_text()
                for sink in sinks:
                    sink.done.wait(120)
            finally:
                engine.stop()
            codes[graphs] = [sink.frame_codes for sink in sinks]
            key = "graphed" if graphs else "eager"
            outcome[f"{key}_step_ms_p50"] = round(percentile([1000 * t for t in engine.step_times_s], 50), 3)
            if graphs:
                outcome["graph_captured"] = engine.cuda_graphs  # False: the capture failed, it ran eagerly
    outcome["frames_compared"] = sum(len(frames) for frames in codes[True])
    outcome["codes_equal"] = outcome["frames_compared"] > 0 and all(
        len(eager) == len(graphed) and all(np.array_equal(a, b) for a, b in zip(eager, graphed, strict=True))
        for eager, graphed in zip(codes[False], codes[True], strict=True)
    )
    return outcome


def _memory_mb(device: str) -> float:
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _write_checkpoint(directory: Path, real_size: bool) -> Any:
    from kyutai_tiny.tts import write_tiny_tts

    if not real_size:
        return write_tiny_tts(directory)
    import copy

    from moshi.models import loaders

    # The shapes of kyutai/tts-1.6b-en_fr with random weights: 2048-dim 16-layer LM, 32
    # codebooks of 2048 codes, 4-layer 1024-dim depformer, 1.28 s audio delay, the real Mimi.
    return write_tiny_tts(
        directory,
        n_q=32,
        dim=2048,
        num_layers=16,
        audio_delay_s=1.28,
        speaker_dim=512,
        voice_frames=125,
        mimi_config=copy.deepcopy(loaders._mimi_config),
        lm_overrides={
            "num_heads": 16,
            "context": 500,
            "depformer_dim": 1024,
            "depformer_num_heads": 16,
            "depformer_num_layers": 4,
            "depformer_dim_feedforward": 3072,
            "depformer_low_rank_embeddings": 128,
        },
        initialise_mimi=False,
        dtype=torch.bfloat16,
    )


def run_level(
    tiny: Any, capacity: int, active: int, device: str, dtype: torch.dtype, cuda_graphs: bool = True
) -> dict[str, Any]:
    """One engine of `capacity` slots speaking the answer on `active` streams at once."""
    from kyutai_tiny.tts import DEFAULT_VOICE
    from kyutai_tts.engine import TTSEngine, load_voice_file

    gc.collect()
    model = tiny.load(device=device, dtype=dtype)
    before = _memory_mb(device)
    engine = TTSEngine(
        model,
        max_streams=capacity,
        default_voice=load_voice_file(tiny.voice_path(DEFAULT_VOICE)),
        default_cfg_alpha=2.0,
        cuda_graphs=cuda_graphs,
    )
    engine.warmup(2)
    state_mb = engine.state_bytes() / 2**20
    engine.start()
    sinks = [_Sink() for _ in range(active)]
    words = ANSWER.split()
    try:
        handles = []
        for sink in sinks:
            handle = engine.open(sink, temperature=0.6)
            sink.started_at = time.perf_counter()
            handle.push_text(words[0])
            handles.append(handle)
        engine.step_times_s.clear()
        engine.batch_sizes.clear()
        for word in words[1:]:  # an LLM writes faster than speech: a word every few ms
            for handle in handles:
                handle.push_text(word)
            time.sleep(0.002)
        for handle in handles:
            handle.end_text()
        for sink in sinks:
            sink.done.wait(600)
        memory = _memory_mb(device) - before
    finally:
        engine.stop()
    # batch_sizes holds the slots each step ran: the streams with words to speak at that step.
    records = list(zip(engine.batch_sizes, engine.step_times_s, strict=True))
    step_s, actives, fallback = measured_steps(records, active)
    if fallback:
        progress(f"  no step ran all {active} streams: every step measured (fallback)")
    steps_ms = [1000 * t for t in step_s]
    ttfa_ms = [1000 * (s.first_audio_at - s.started_at) for s in sinks if s.first_audio_at is not None]
    errors = [s.error for s in sinks if s.error]
    step_p50 = percentile(steps_ms, 50)
    row = {
        "streams": active,
        "capacity": capacity,
        "active": active,
        "batch_fill_pct": fill_pct(actives, capacity),
        "step_ms_p50": round(step_p50, 3),
        "step_ms_p99": round(percentile(steps_ms, 99), 3),
        "rtf": round(step_p50 / (1000 * FRAME_S), 4),
        "ttfa_ms_p50": round(percentile(ttfa_ms, 50), 1),
        "ttfa_ms_p95": round(percentile(ttfa_ms, 95), 1),
        "mem_mb": round(memory, 1),
        "state_mb": round(state_mb, 3),
        # Streaming state is allocated per slot, for every slot of the capacity.
        "mem_per_stream_mb": round(state_mb / capacity, 3),
        "steps_measured": len(steps_ms),
        "steps_total": len(records),
        # True: no step ran every stream, so every step of the level was measured.
        "fallback": fallback,
        "audio_s_per_stream": round(float(np.mean([s.frames for s in sinks])) * FRAME_S, 2),
        "errors": len(errors),
        "cuda_graphs": engine.cuda_graphs,
    }
    del engine, model
    return row


async def _plugin_first_frame_ms(tiny: Any, device: str, runs: int = 3) -> list[float]:
    """Through the real server and the LiveKit plugin: first word sent → first frame out."""
    import socket

    import uvicorn
    from kyutai_tiny.tts import DEFAULT_VOICE
    from kyutai_tts import TTS
    from kyutai_tts.server import build_service, create_app
    from kyutai_tts.settings import EngineSettings, PluginSettings
    from livekit.agents import APIConnectOptions

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    settings = EngineSettings(
        checkpoint=str(tiny.directory),
        voice_dir=tiny.voice_dir,
        default_voice=DEFAULT_VOICE,
        allow_hub_voices=False,
        max_streams=2,
        device=device,
        api_keys=[],
    )
    service = await asyncio.to_thread(build_service, settings)
    server = uvicorn.Server(uvicorn.Config(create_app(service), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    latencies = []
    try:
        tts = TTS(settings=PluginSettings(url=f"ws://127.0.0.1:{port}", voice=DEFAULT_VOICE))
        for _ in range(runs):
            stream = tts.stream(conn_options=APIConnectOptions(max_retry=0))
            for word in ANSWER.split():
                stream.push_text(word + " ")
            stream.end_input()
            async for _event in stream:
                if stream.first_word_sent_at is not None:
                    latencies.append(1000 * (time.monotonic() - stream.first_word_sent_at))
                break
            await stream.aclose()
    finally:
        server.should_exit = True
        await serving
        service.engine.stop()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="only 1 and `capacity` active streams")
    parser.add_argument(
        "--capacity", type=int, default=DEFAULT_CAPACITY, help="slots of the engine, fixed for every level"
    )
    parser.add_argument("--levels", help="comma-separated active stream counts, e.g. 1,64,256")
    parser.add_argument("--real-size", action="store_true", help="random weights with the real model's shapes")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="run the depformer eagerly (for comparison)")
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    capacity = args.capacity
    levels = active_levels(capacity, args.quick, args.levels)
    results: list[dict[str, Any]] = []
    skip_idle: list[dict[str, Any]] = []
    graphs = not args.no_cuda_graphs
    checked: dict[str, Any] | None = None
    if args.device.startswith("cuda"):
        progress("graph check: the depformer as a CUDA graph against eager, tiny weights")
        checked = graph_check(args.device, dtype)
        progress(f"  {checked}")
    with tempfile.TemporaryDirectory(prefix="bench-tts-") as tmp:
        progress(f"writing {'real-size' if args.real_size else 'tiny'} random-weight checkpoint")
        tiny = _write_checkpoint(Path(tmp), args.real_size)
        for active in levels:
            progress(f"{active} active stream(s) on {capacity} slots…")
            row = run_level(tiny, capacity, active, args.device, dtype, graphs)
            row_measured(row)
            results.append(row)
        for active in skip_idle_points(capacity):
            full = next((row for row in results if row["active"] == active), None)
            if full is None:
                progress(f"{active} active stream(s) on {capacity} slots (for the idle-slot cost)…")
                full = run_level(tiny, capacity, active, args.device, dtype, graphs)
            progress(f"{active} active stream(s) on {active} slots (a batch of only the live slots)…")
            sized = run_level(tiny, active, active, args.device, dtype, graphs)
            skip_idle.append(skip_idle_entry(capacity, active, full["step_ms_p50"], sized["step_ms_p50"]))
            skip_idle[-1]["sized_ttfa_ms_p50"] = sized["ttfa_ms_p50"]
            skip_idle[-1]["errors"] = full["errors"] + sized["errors"]
            progress(f"  {skip_idle[-1]}")
        plugin_ms: list[float] = []
        if livekit_agents_installed():
            progress("plugin over the server: first word sent → first frame out")
            plugin_ms = asyncio.run(_plugin_first_frame_ms(tiny, args.device))
        else:
            progress("livekit-agents is not installed here: no first frame timed through the plugin")
    single = results[0]
    realtime = [row["active"] for row in results if row["rtf"] < 1.0]
    emit(
        "tts",
        weights="real-size-random" if args.real_size else "tiny",
        quick=args.quick,
        results=results,
        **summary(capacity, results, skip_idle),
        # The step with the most active streams against one active, at the same capacity.
        step_ratio_max_vs_1=round(results[-1]["step_ms_p50"] / max(single["step_ms_p50"], 1e-9), 2),
        max_realtime_streams=max(realtime) if realtime else 0,
        plugin_first_frame_ms_p50=round(percentile(plugin_ms, 50), 1) if plugin_ms else None,
        threads=torch.get_num_threads(),
        # On a GPU: graphed and eager depformer give the same codes, and each one's step (tiny weights).
        graph_check=checked,
    )


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
