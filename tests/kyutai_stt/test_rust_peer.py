"""Kyutai's own Rust `moshi-server` as a peer of our STT engine (bench.peer).

The config bench.peer writes for it is checked everywhere. Where the binary is present
(`python -m bench.peer --build` once: about 10 min on 2 cores; CI does not build it), our LiveKit
plugin transcribes a member's turn through moshi-server on the same weights as our engine, and the
peer bench gives its JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from kyutai_stt import STT
from livekit.agents.stt import SpeechEventType
from safetensors.numpy import load_file

from bench.common import REPO
from bench.peer import (
    API_KEY,
    CHECKPOINT_DIR,
    PeerCheckpoint,
    peer_binary,
    rust_model_config,
    rust_peer,
    toml_text,
    write_candle_copy,
    write_peer_checkpoint,
)

from .conftest import speech
from .test_plugin import FAST_FAIL, assert_turns_well_formed, collect, to_frames


def test_the_peer_config_is_the_checkpoints_model_in_moshi_servers_terms(tiny_stt_dir: Path) -> None:
    config = json.loads((tiny_stt_dir / "config.json").read_text())
    model = rust_model_config(config)
    table = {"authorized_ids": ["k"], "modules": {"asr": {"type": "BatchedAsr", "batch_size": 4, "model": model}}}
    read_back = tomllib.loads(toml_text(table))
    assert read_back["modules"]["asr"]["model"] == model
    transformer = read_back["modules"]["asr"]["model"]["transformer"]
    assert (transformer["d_model"], transformer["num_layers"]) == (config["dim"], config["num_layers"])
    assert read_back["modules"]["asr"]["model"]["text_in_vocab_size"] == config["text_card"] + 1
    assert read_back["modules"]["asr"]["model"]["extra_heads"] == {"num_heads": 4, "dim": 6}


def test_the_candle_copy_holds_the_same_tensors_under_moshi_servers_names(tiny_stt_dir: Path, tmp_path: Path) -> None:
    config = json.loads((tiny_stt_dir / "config.json").read_text())
    ours = load_file(str(tiny_stt_dir / config["moshi_name"]))
    theirs = load_file(str(write_candle_copy(tiny_stt_dir / config["moshi_name"], tmp_path / "lm.safetensors")))
    assert len(theirs) == len(ours)
    assert "transformer.layers.0.self_attn.in_proj_weight" in theirs
    assert not any(".in_projs." in name or ".out_projs." in name for name in theirs)
    layer = "transformer.layers.1.self_attn"
    np.testing.assert_array_equal(theirs[f"{layer}.out_proj.weight"], ours[f"{layer}.out_projs.0.weight"])


@pytest.fixture(scope="module")
def moshi_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    binary = peer_binary()
    if binary is None:
        pytest.skip("Kyutai's moshi-server is not built here (python -m bench.peer --build)")
    checkpoint: PeerCheckpoint = write_peer_checkpoint(CHECKPOINT_DIR)
    with rust_peer(binary, checkpoint, 2, 1, tmp_path_factory.mktemp("peer") / "moshi-server.log") as url:
        yield url


async def test_a_members_turn_through_our_plugin_on_kyutais_rust_server(moshi_server: str) -> None:
    audio = np.concatenate([speech(3.0, seed=11), np.zeros(24000 * 2, np.float32)])
    stream = STT(url=moshi_server, api_key=API_KEY).stream(conn_options=FAST_FAIL)
    for frame in to_frames(audio, 24000, 480):
        stream.push_frame(frame)
    stream.end_input()
    events = await collect(stream, 60)
    kinds = [e.type for e in events]
    assert SpeechEventType.FINAL_TRANSCRIPT in kinds, kinds
    assert_turns_well_formed(events)
    words = [w for e in events if e.type == SpeechEventType.FINAL_TRANSCRIPT for w in e.alternatives[0].words or []]
    assert words and all(0.0 <= float(w.start_time) <= len(audio) / 24000 for w in words)  # type: ignore[arg-type]
    await stream.aclose()


@pytest.mark.timeout(600)
def test_the_peer_bench_reports_both_servers(moshi_server: str) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--streams", "1", "--seconds", "4"],
        cwd=REPO, capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    payload = json.loads(run.stdout.strip().splitlines()[-1])
    assert payload["bench"] == "peer" and payload["ratio_ttfa"] is None
    engines = {row["engine"]: row for row in payload["results"]}
    assert set(engines) == {"ours", "moshi-server"}
    for row in engines.values():
        assert row["streams"] == 1 and row["frames"] == 50 and row["frames_without_step"] == 0, row
        assert row["step_ms_p50"] > 0 and row["rtf"] > 0
    assert payload["ratio_step"]["1"] > 0


def test_without_moshi_server_the_peer_bench_says_how_to_build_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "JARVIS_MOSHI_SERVER"}
    run = subprocess.run(
        [sys.executable, "-m", "bench.peer", "--quick"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**env, "JARVIS_RUST_PEER_ROOT": str(tmp_path)},
    )  # fmt: skip
    assert run.returncode == 2, run.stderr[-2000:]
    assert "python -m bench.peer" in run.stderr and "--build" in run.stderr
    assert not list(tmp_path.iterdir()), "nothing is built or downloaded unless asked"
