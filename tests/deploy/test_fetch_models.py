"""Models fetched ahead (`make models`), from a stand-in Hugging Face hub on loopback.

The stand-in serves tiny random-weight checkpoints under the real repo ids and file names the
settings name (kyutai/stt-1b-en_fr-candle, kyutai/tts-1.6b-en_fr, kyutai/tts-voices) through the
routes huggingface_hub uses: repo metadata with its files (/api/models/...) and file downloads
(/{repo}/resolve/{revision}/{file}, with X-Repo-Commit, ETag and Content-Length). The fetch runs in
its own process with an empty HF_HOME, as an ops person would run it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from jarvis_local.speech_models import REAL_STT, REAL_TTS, TINY_BANNER, choose_speech_models, tiny_models
from jarvis_local.stack import REPO, free_port

VOICE_REPO = "kyutai/tts-voices"
VOICE = "unmute-prod-website/fabieng-enhanced-v2.wav"  # the settings' default French voice
TTS_SIG, TTS_EPOCH = "1e68beda", 240  # the real TTS checkpoint's model_id: voice files end in it
COMMIT = "0123456789abcdef0123456789abcdef01234567"
# The real repositories' file names (config.json names them; mimi_config is the tiny models' extra).
STT_NAMES = {
    "moshi_name": "model.safetensors",
    "mimi_name": "mimi-pytorch-e351c8d8@125.safetensors",
    "tokenizer_name": "tokenizer_en_fr_audio_8000.model",
}
TTS_NAMES = {
    "moshi_name": f"dsm_tts_{TTS_SIG}@{TTS_EPOCH}.safetensors",
    "mimi_name": "tokenizer-e351c8d8-checkpoint125.safetensors",
    "tokenizer_name": "tokenizer_spm_8k_en_fr_audio.model",
}


def real_layout(tiny: Path, repo: Path, names: dict[str, str], model_id: dict[str, object] | None = None) -> None:
    """Copies a tiny checkpoint under the real repo's file names, with a config.json naming them."""
    config = json.loads((tiny / "config.json").read_text())
    repo.mkdir(parents=True)
    for key, name in names.items():
        shutil.copyfile(tiny / config[key], repo / name)
        config[key] = name
    shutil.copyfile(tiny / config["mimi_config_name"], repo / config["mimi_config_name"])
    if model_id is not None:
        config["model_id"] = model_id
    (repo / "config.json").write_text(json.dumps(config))
    (repo / "README.md").write_text("# not needed by the engines: never fetched\n")


@dataclass
class StandInHub:
    """A Hugging Face hub on loopback: repos are folders under `root` (owner/name/files)."""

    root: Path
    gets: list[str] = field(default_factory=list)  # files downloaded (GET .../resolve/...)
    url: str = ""

    def repo_json(self, repo: str) -> dict[str, object]:
        siblings = []
        for path in sorted(p for p in (self.root / repo).rglob("*") if p.is_file()):
            data = path.read_bytes()
            sibling: dict[str, object] = {"rfilename": str(path.relative_to(self.root / repo)), "size": len(data)}
            if path.suffix == ".safetensors":  # stored in LFS on the real hub: size and SHA-256 listed
                sibling["lfs"] = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "pointerSize": 134}
            siblings.append(sibling)
        return {"id": repo, "modelId": repo, "sha": COMMIT, "private": False, "siblings": siblings}

    def handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # quiet: pytest shows failures
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, *, body: bool) -> None:
                path = urllib.parse.unquote(self.path.split("?")[0])
                parts = path.strip("/").split("/")
                if parts[:2] == ["api", "models"] and len(parts) >= 4:
                    repo = "/".join(parts[2:4])
                    if not (hub.root / repo).is_dir():
                        return self.send(404, b"{}", {})
                    return self.send(200, json.dumps(hub.repo_json(repo)).encode(), {}, body=body)
                if len(parts) >= 5 and parts[2] == "resolve":
                    repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
                    file = hub.root / repo / filename
                    if not file.is_file():
                        return self.send(404, b"", {"X-Error-Code": "EntryNotFound"})
                    data = file.read_bytes()
                    headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha256(data).hexdigest()}"'}
                    if body:
                        hub.gets.append(f"{repo}/{filename}")
                    return self.send(200, data, headers, body=body)
                self.send(404, b"", {})

            def send(self, status: int, data: bytes, headers: dict[str, str], *, body: bool = True) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

        return Handler


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny checkpoints, built once (under <dir>/tiny-models, where choose_speech_models looks)."""
    data = tmp_path_factory.mktemp("fetch-tiny")
    tiny_models(data / "tiny-models")
    return data


@pytest.fixture
def hub(tiny: Path, tmp_path: Path) -> Iterator[StandInHub]:
    models = tiny / "tiny-models"
    root = tmp_path / "hub"
    real_layout(models / "stt", root / REAL_STT, STT_NAMES)
    real_layout(models / "tts", root / REAL_TTS, TTS_NAMES, {"sig": TTS_SIG, "epoch": TTS_EPOCH})
    voice = root / VOICE_REPO / f"{VOICE}.{TTS_SIG}@{TTS_EPOCH}.safetensors"
    voice.parent.mkdir(parents=True)
    tiny_voice = next((models / "tts" / "voices").rglob("*.safetensors"))
    shutil.copyfile(tiny_voice, voice)
    stand_in = StandInHub(root)
    server = ThreadingHTTPServer(("127.0.0.1", 0), stand_in.handler())
    stand_in.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield stand_in
    server.shutdown()
    server.server_close()


def hub_env(hf_home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KYUTAI_", "HF_"))}
    return {**env, "HF_HOME": str(hf_home), "HF_ENDPOINT": endpoint, "PYTHONPATH": str(REPO / "plugins"), **extra}


def run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=300)


CHOOSE = """
import json, sys
from pathlib import Path
from jarvis_local.speech_models import choose_speech_models
models, note = choose_speech_models(Path(sys.argv[1]))
print(json.dumps({"weights": models.weights, "env": models.engine_env(), "note": note}))
"""

# What the engine servers do at start, with the hub gone and HF_HUB_OFFLINE=1.
LOAD_OFFLINE = f"""
from kyutai_common.checkpoint import checkpoint_info
from kyutai_stt.engine import load_checkpoint
import torch
from moshi.models.tts import TTSModel
stt = load_checkpoint("{REAL_STT}", device="cpu", dtype="float32")
info = checkpoint_info("{REAL_TTS}")
tts = TTSModel.from_checkpoint_info(info, n_q=int(info.raw_config["dep_q"]), device="cpu", dtype=torch.float32)
print("voice", tts.get_voice_path("{VOICE}"))
print("stt", stt.info.moshi_weights)
"""


def test_models_are_fetched_once_verified_and_then_load_offline(hub: StandInHub, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf-home"  # empty: a fresh GPU host

    first = run(["-m", "jarvis_local.fetch_models"], hub_env(hf_home, hub.url))
    assert first.returncode == 0, first.stderr[-3000:]
    wanted = [
        *(f"{REAL_STT}/{name}" for name in ("config.json", *STT_NAMES.values())),
        *(f"{REAL_TTS}/{name}" for name in ("config.json", *TTS_NAMES.values())),
        f"{VOICE_REPO}/{VOICE}.{TTS_SIG}@{TTS_EPOCH}.safetensors",
    ]
    assert set(wanted) <= set(hub.gets), hub.gets
    assert not [get for get in hub.gets if get.endswith("README.md")], "only what the engines load is fetched"
    assert len(hub.gets) == 11 and "11 files fetched, 0 already present" in first.stdout, first.stdout
    assert "verified" in first.stdout
    print(first.stdout.splitlines()[-1])

    # The demo, on a machine where the hub answers and the models are cached: real weights, nothing downloaded.
    gets_before = len(hub.gets)
    second = run(["-c", CHOOSE, str(tmp_path / "demo-data")], hub_env(hf_home, hub.url))
    assert second.returncode == 0, second.stderr[-3000:]
    chosen = json.loads(second.stdout.splitlines()[-1])
    assert len(hub.gets) == gets_before, hub.gets[gets_before:]
    assert chosen["weights"] == "real"
    stt_env, tts_env = chosen["env"]
    assert stt_env == {"KYUTAI_STT_CHECKPOINT": REAL_STT, "HF_HUB_OFFLINE": "1"}
    assert tts_env == {"KYUTAI_TTS_CHECKPOINT": REAL_TTS, "HF_HUB_OFFLINE": "1"}
    assert "0 files fetched" in chosen["note"], chosen["note"]

    # The engines resolve their checkpoints and voice from the cache alone: the hub is unreachable.
    dead_hub = f"http://127.0.0.1:{free_port()}"
    loaded = run(["-c", LOAD_OFFLINE], hub_env(hf_home, dead_hub, HF_HUB_OFFLINE="1"))
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert str(hf_home) in loaded.stdout and "fabieng-enhanced-v2" in loaded.stdout, loaded.stdout


def test_a_corrupted_cached_file_fails_verification(hub: StandInHub, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf-home"
    assert run(["-m", "jarvis_local.fetch_models"], hub_env(hf_home, hub.url)).returncode == 0
    weights = next(hf_home.rglob(TTS_NAMES["moshi_name"])).resolve()  # the blob the snapshot links to
    weights.write_bytes(weights.read_bytes()[:-10])

    again = run(["-m", "jarvis_local.fetch_models"], hub_env(hf_home, hub.url))
    assert again.returncode == 1
    assert f"{REAL_TTS}/{TTS_NAMES['moshi_name']}" in again.stderr and "bytes on disk" in again.stderr, again.stderr


def test_the_demo_falls_back_to_tiny_models_when_the_hub_does_not_answer(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("KYUTAI_STT_CHECKPOINT", "KYUTAI_TTS_CHECKPOINT", "HF_HUB_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    closed_port = free_port()  # nothing listens: connection refused at once

    models, note = choose_speech_models(tiny, endpoint=f"http://127.0.0.1:{closed_port}", log=lambda line: None)

    assert models.weights == "tiny" and not models.offline
    assert note == TINY_BANNER
    assert Path(models.stt_checkpoint) == tiny / "tiny-models" / "stt"
