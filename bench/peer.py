"""Our STT engine beside Kyutai's own Rust `moshi-server`, same weights, same client, same load:
`python -m bench.peer [--quick] [--build] [--streams 1,2,4,8] [--seconds 8] [--threads 1]`.

The peer is `moshi-server` from crates.io (version RUST_PEER_VERSION), built once with
`cargo install` into `~/.cache/jarvis/rust-peer` (`--build`; or `$JARVIS_MOSHI_SERVER` names a
binary). Without it the bench says so and exits 2: it never downloads anything unless told to.

Weights: the tiny random-weight STT LM with the real Mimi (random weights, codebooks fitted on
speech-like audio), written once by moshi's own classes (`kyutai_tiny.stt.write_tiny_stt(
real_mimi=True)`) into `~/.cache/jarvis/rust-peer/checkpoint-tiny-lm-real-mimi`: moshi-server
builds its Mimi from the real config alone, so a tiny Mimi cannot be shared. The Rust server reads the same
tensors under candle's names (a renamed copy: `in_projs.0.weight` → `in_proj_weight`, ...) and
its model config as TOML, all derived from the checkpoint's `config.json`.

Both servers get the same CPU threads (`--threads`: torch's for ours, rayon's for moshi-server)
and, at each level, a batch of that many streams (both compute the whole batch at every step, so
this is each one at full load). For each level, that many Kyutai-protocol clients stream the same
speech-like audio in real time (80 ms frames) to one server, then the other. Per row (`engine` × `streams`):
- `step_ms_p50` / `_p95`: from sending a frame to receiving its `Step` message, as the client sees
  it (both servers send one Step per stream per model step; their internal timers differ);
- `rtf`: mean of that over the frame period (80 ms);
- `first_word_ms`: from the first frame sent to the first `Word` received (stream 0);
- `words`: stream 0's words with their `start_time`.
Top level: `ratio_step` (ours / theirs, step_ms_p50 at each level), `ratio_first_word`,
`word_times`: for the words both servers transcribed alike, the offsets ours − theirs of their
start times (the question of the silence prefix, settled against the Rust server).
`ratio_ttfa` is null: the TTS peer is not run (see docs/state.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import websockets
from kyutai_stt.protocol import PATH as ASR_PATH

from bench.common import REPO, emit, percentile, progress, row_measured
from jarvis_local.stack import free_port, wait_for

RUST_PEER_VERSION = "0.6.4"
PEER_ROOT = Path(os.environ.get("JARVIS_RUST_PEER_ROOT", Path.home() / ".cache" / "jarvis" / "rust-peer"))
# Written once (fitting the real Mimi's codebooks takes minutes on a small CPU), beside the binary.
CHECKPOINT_DIR = PEER_ROOT / "checkpoint-tiny-lm-real-mimi"
API_KEY = "bench-peer-key"
FRAME = 1920  # 80 ms at 24 kHz
FRAME_S = 0.08
SAMPLE_RATE = 24000
# moshi-server's names for the tensors moshi's Python classes save differently.
CANDLE_NAMES = {"self_attn.in_projs.0.weight": "self_attn.in_proj_weight", "self_attn.out_projs.0.weight":
                "self_attn.out_proj.weight"}  # fmt: skip


class PeerUnavailable(RuntimeError):
    """moshi-server is neither built nor named: the bench cannot run its peer."""


def peer_binary() -> Path | None:
    named = os.environ.get("JARVIS_MOSHI_SERVER")
    if named:
        return Path(named) if Path(named).is_file() else None
    built = PEER_ROOT / "bin" / "moshi-server"
    return built if built.is_file() else None


def build_peer() -> Path:
    """`cargo install moshi-server` (CPU build) into PEER_ROOT; quick when it is there already."""
    if shutil.which("cargo") is None:
        raise PeerUnavailable("cargo is not installed: https://rustup.rs, then python -m bench.peer --build")
    command = ["cargo", "install", "moshi-server", "--version", RUST_PEER_VERSION, "--locked", "--root", str(PEER_ROOT)]
    progress(f"building Kyutai's moshi-server {RUST_PEER_VERSION} (once, 20-30 min on 2 cores): {' '.join(command)}")
    subprocess.run(command, check=True)
    binary = peer_binary()
    if binary is None:
        raise PeerUnavailable(f"cargo install finished but {PEER_ROOT / 'bin' / 'moshi-server'} is missing")
    return binary


# --- the shared checkpoint ---------------------------------------------------------------------


def write_candle_copy(weights: Path, target: Path) -> Path:
    """The tensors under moshi-server's names (those of Kyutai's published files): the same values.
    Written again only when ``weights`` is newer (the Mimi's copy is 385 MB)."""
    from safetensors.numpy import load_file, save_file

    if target.is_file() and target.stat().st_mtime >= weights.stat().st_mtime:
        return target
    renamed: dict[str, np.ndarray] = {}
    for name, tensor in load_file(str(weights)).items():
        for python_name, candle_name in CANDLE_NAMES.items():
            name = name.replace(python_name, candle_name)
        if ".in_projs." in name or ".out_projs." in name:
            raise ValueError(f"{name}: multi-linear attention has no moshi-server name")
        renamed[name] = tensor
    save_file(renamed, str(target))
    return target


def rust_model_config(config: dict[str, Any]) -> dict[str, Any]:
    """moshi-server's `[modules.asr.model]` for an STT checkpoint's config.json."""
    dim = int(config["dim"])
    transformer = {
        "d_model": dim, "num_heads": int(config["num_heads"]), "num_layers": int(config["num_layers"]),
        "dim_feedforward": int(config["hidden_scale"] * dim), "causal": bool(config["causal"]),
        "norm_first": True, "bias_ff": False, "bias_attn": False, "context": int(config["context"]),
        "max_period": int(config["max_period"]), "use_conv_block": False, "use_conv_bias": True,
        "gating": config["gating"], "norm": "RmsNorm", "positional_embedding": "Rope", "conv_layout": False,
        "conv_kernel_size": 3, "kv_repeat": 1, "max_seq_len": 4096,
    }  # fmt: skip
    if config.get("layer_scale") is not None or config["positional_embedding"] != "rope":
        raise ValueError("bench.peer maps only the STT layout Kyutai ships (no layer scale, rope)")
    model: dict[str, Any] = {
        "audio_vocab_size": int(config["card"]) + 1,
        "text_in_vocab_size": int(config["text_card"]) + 1,
        "text_out_vocab_size": int(config["text_card"]),
        "audio_codebooks": int(config["n_q"]),
        "transformer": transformer,
    }
    if config.get("extra_heads_num_heads"):
        heads = int(config["extra_heads_num_heads"])
        model["extra_heads"] = {"num_heads": heads, "dim": int(config["extra_heads_dim"])}
    return model


def toml_text(table: dict[str, Any], prefix: str = "") -> str:
    """TOML for nested dicts of strings, numbers, booleans and lists (all this config needs)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"no TOML for {v!r}")

    lines = [f"{key} = {value(v)}" for key, v in table.items() if not isinstance(v, dict)]
    for key, v in table.items():
        if isinstance(v, dict):
            name = f"{prefix}.{key}" if prefix else key
            lines += ["", f"[{name}]", toml_text(v, name)]
    return "\n".join(lines)


@dataclass(frozen=True)
class PeerCheckpoint:
    directory: Path  # ours: config.json and the files it names
    asr_module: dict[str, Any]  # moshi-server's [modules.asr], pointing at the renamed copies beside them

    def rust_config(self, batch_size: int) -> Path:
        """moshi-server's TOML for a batch of ``batch_size`` streams."""
        top = {"static_dir": str(self.directory), "log_dir": str(self.directory / "rust-logs"),
               "instance_name": "bench-peer", "authorized_ids": [API_KEY],
               "modules": {"asr": {**self.asr_module, "batch_size": batch_size}}}  # fmt: skip
        path = self.directory / f"moshi-server-batch{batch_size}.toml"
        path.write_text(toml_text(top) + "\n")
        return path


def write_peer_checkpoint(directory: Path) -> PeerCheckpoint:
    from kyutai_tiny.stt import write_tiny_stt

    if not (directory / "config.json").is_file():
        progress("writing the shared checkpoint (tiny LM, real-size Mimi) with moshi's own classes")
        # 0.48 s is moshi-server's 6 tokens of delay exactly: any difference in word times is then
        # the servers' own, not a rounding of the delay.
        # No acoustic delay between codebooks: moshi-server's ASR has none (Kyutai's STT has none).
        write_tiny_stt(directory, real_mimi=True, audio_delay_seconds=0.48, lm_overrides={"delays": [0] * 5})
    config = json.loads((directory / "config.json").read_text())
    candle_lm = write_candle_copy(directory / config["moshi_name"], directory / "lm-candle.safetensors")
    candle_mimi = write_candle_copy(directory / config["mimi_name"], directory / "mimi-candle.safetensors")
    asr = {
        "path": ASR_PATH, "type": "BatchedAsr", "lm_model_file": str(candle_lm),
        "text_tokenizer_file": str(directory / config["tokenizer_name"]),
        "audio_tokenizer_file": str(candle_mimi),
        "asr_delay_in_tokens": round(config["stt_config"]["audio_delay_seconds"] * 12.5),
        "temperature": 0.0, "model": rust_model_config(config),
    }  # fmt: skip
    return PeerCheckpoint(directory, asr)


# --- the two servers ---------------------------------------------------------------------------


@contextmanager
def running(name: str, command: list[str], env: dict[str, str], port: int, health: str, log: Path) -> Iterator[str]:
    proc = subprocess.Popen(command, env={**os.environ, **env}, cwd=REPO, stdout=open(log, "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{health}", timeout=1):
            return True

    try:
        wait_for(healthy, f"{name} (log: {log})", 300, proc)
        yield f"ws://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def our_engine(checkpoint: PeerCheckpoint, batch_size: int, threads: int, log: Path) -> Iterator[str]:
    port = free_port()
    env = {
        "KYUTAI_STT_CHECKPOINT": str(checkpoint.directory), "KYUTAI_STT_HOST": "127.0.0.1",
        "KYUTAI_STT_PORT": str(port), "KYUTAI_STT_API_KEYS": json.dumps([API_KEY]),
        "KYUTAI_STT_MAX_STREAMS": str(batch_size), "KYUTAI_STT_TORCH_THREADS": str(threads),
        # moshi-server feeds no silence before the audio: neither do we here, so both models see the same input.
        "KYUTAI_STT_SILENCE_PREFIX": "false", "NO_TORCH_COMPILE": "1", "HF_HUB_OFFLINE": "1",
    }  # fmt: skip
    with running("our STT engine", [sys.executable, "-m", "kyutai_stt.server"], env, port, "/api/health", log) as url:
        yield url


@contextmanager
def rust_peer(binary: Path, checkpoint: PeerCheckpoint, batch_size: int, threads: int, log: Path) -> Iterator[str]:
    port = free_port()
    command = [str(binary), "worker", "--cpu", "--addr", "127.0.0.1", "--port", str(port),
               "--config", str(checkpoint.rust_config(batch_size))]  # fmt: skip
    with running("moshi-server", command, {"RAYON_NUM_THREADS": str(threads)}, port, "/api/build_info", log) as url:
        yield url


# --- the client ----------------------------------------------------------------------------------


@dataclass
class StreamRecord:
    sent: list[float] = field(default_factory=list)  # perf_counter of each frame sent
    steps: list[float] = field(default_factory=list)  # perf_counter of each Step received
    words: list[tuple[str, float]] = field(default_factory=list)
    first_word_s: float | None = None
    error: str | None = None


async def stream(url: str, audio: np.ndarray, start_delay_s: float) -> StreamRecord:
    record = StreamRecord()
    await asyncio.sleep(start_delay_s)
    async with websockets.connect(url + ASR_PATH, additional_headers={"kyutai-api-key": API_KEY}, max_size=None) as ws:
        sending = True
        caught_up = asyncio.Event()  # every frame sent has its Step

        async def read() -> None:
            async for raw in ws:
                message = msgpack.unpackb(raw)
                at = time.perf_counter()
                kind = message.get("type")
                if kind == "Step":
                    record.steps.append(at)
                    if not sending and len(record.steps) >= len(record.sent):
                        caught_up.set()
                elif kind == "Word":
                    record.words.append((message["text"], round(float(message["start_time"]), 3)))
                    if record.first_word_s is None and record.sent:
                        record.first_word_s = at - record.sent[0]
                elif kind == "Error":
                    record.error = str(message.get("message"))

        reader = asyncio.create_task(read())
        start = time.perf_counter()
        frames = [audio[i : i + FRAME] for i in range(0, len(audio) - FRAME + 1, FRAME)]
        for index, frame in enumerate(frames):
            await asyncio.sleep(max(0.0, start + index * FRAME_S - time.perf_counter()))
            record.sent.append(time.perf_counter())
            await ws.send(msgpack.packb({"type": "Audio", "pcm": frame.astype(np.float32).tolist()}))
        sending = False
        if len(record.steps) >= len(record.sent):
            caught_up.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(caught_up.wait(), 10)
        reader.cancel()
    return record


def level_row(engine: str, streams: int, records: list[StreamRecord]) -> dict[str, Any]:
    latencies = [1000 * (step - sent) for r in records for sent, step in zip(r.sent, r.steps, strict=False)]
    lost = sum(max(0, len(r.sent) - len(r.steps)) for r in records)
    return {
        "engine": engine,
        "streams": streams,
        "step_ms_p50": round(percentile(latencies, 50), 1),
        "step_ms_p95": round(percentile(latencies, 95), 1),
        "rtf": round(statistics.fmean(latencies) / (1000 * FRAME_S), 3) if latencies else None,
        "first_word_ms": None if records[0].first_word_s is None else round(1000 * records[0].first_word_s),
        "frames": sum(len(r.sent) for r in records),
        "frames_without_step": lost,
        "errors": sorted({r.error for r in records if r.error}),
        "words": records[0].words,
    }


async def run_level(url: str, engine: str, streams: int, audio: np.ndarray) -> dict[str, Any]:
    # Clients out of phase, as real kiosks are: spread over one frame period.
    records = await asyncio.gather(*(stream(url, audio, i * FRAME_S / streams) for i in range(streams)))
    row = level_row(engine, streams, list(records))
    row_measured({k: v for k, v in row.items() if k != "words"})
    return row


def word_offsets(ours: list[tuple[str, float]], theirs: list[tuple[str, float]]) -> dict[str, Any]:
    same = [(a[1], b[1]) for a, b in zip(ours, theirs, strict=False) if a[0] == b[0]]
    offsets = [round(a - b, 3) for a, b in same]
    return {
        "ours": len(ours), "theirs": len(theirs), "same_text_in_order": len(same),
        "offset_s_p50": statistics.median(offsets) if offsets else None,
        "offset_s_min": min(offsets) if offsets else None, "offset_s_max": max(offsets) if offsets else None,
    }  # fmt: skip


def ratio(ours: float | None, theirs: float | None) -> float | None:
    return round(ours / theirs, 3) if ours is not None and theirs else None


async def measure(args: argparse.Namespace, binary: Path, checkpoint: PeerCheckpoint, logs: Path) -> dict[str, Any]:
    from kyutai_tiny.common import synthetic_speech

    audio = synthetic_speech(args.seconds, SAMPLE_RATE, seed=7).astype(np.float32)
    rows: list[dict[str, Any]] = []
    # Each level on servers sized to it: both compute their whole batch at every step, live or not,
    # so a batch of exactly the live streams is the deployment at full load.
    for streams in args.streams:
        with our_engine(checkpoint, streams, args.threads, logs / f"ours-{streams}.log") as url:
            progress(f"ours: {streams} stream(s)")
            rows.append(await run_level(url, "ours", streams, audio))
        with rust_peer(binary, checkpoint, streams, args.threads, logs / f"moshi-server-{streams}.log") as url:
            progress(f"moshi-server: {streams} stream(s)")
            rows.append(await run_level(url, "moshi-server", streams, audio))
    by = {(r["engine"], r["streams"]): r for r in rows}
    ratios = {str(n): ratio(by["ours", n]["step_ms_p50"], by["moshi-server", n]["step_ms_p50"]) for n in args.streams}
    first_word = {str(n): ratio(by["ours", n]["first_word_ms"], by["moshi-server", n]["first_word_ms"])
                  for n in args.streams}  # fmt: skip
    smallest = min(args.streams)
    return {
        "results": rows,
        "ratio_step": ratios,
        "ratio_first_word": first_word,
        "ratio_ttfa": None,
        "word_times": word_offsets(by["ours", smallest]["words"], by["moshi-server", smallest]["words"]),
        "peer": f"moshi-server {RUST_PEER_VERSION} (crates.io, CPU build)",
        "threads": args.threads,
        "seconds": args.seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="streams 1 and 4, 6 s of audio")
    parser.add_argument("--build", action="store_true", help="build moshi-server with cargo when it is missing")
    parser.add_argument("--streams", type=lambda s: [int(x) for x in s.split(",")], default=None)
    parser.add_argument("--seconds", type=float, default=None, help="audio per stream (default 10; quick: 6)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each server (default 1)")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the logs here")
    args = parser.parse_args()
    args.streams = args.streams or ([1, 4] if args.quick else [1, 2, 4, 8])
    args.seconds = args.seconds or (6.0 if args.quick else 10.0)

    binary = peer_binary()
    try:
        if binary is None and args.build:
            binary = build_peer()
    except (PeerUnavailable, subprocess.CalledProcessError) as error:
        progress(f"bench.peer: {error}")
        sys.exit(2)
    if binary is None:
        progress(f"bench.peer: no moshi-server in {PEER_ROOT / 'bin'} nor $JARVIS_MOSHI_SERVER;"
                 " build it once with `python -m bench.peer --build` (cargo, about 10 min on 2 cores)")
        sys.exit(2)

    os.environ.setdefault("NO_TORCH_COMPILE", "1")
    with tempfile.TemporaryDirectory(prefix="bench-peer-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoint = write_peer_checkpoint(CHECKPOINT_DIR)
        top = asyncio.run(measure(args, binary, checkpoint, workdir))
    rows = top.pop("results")
    emit("peer", weights="tiny-lm+real-size-mimi (random)", quick=args.quick, results=rows, **top)


if __name__ == "__main__":
    main()
