"""``make models`` / ``python -m jarvis_local.fetch_models``: the Kyutai checkpoints and voices, fetched ahead.

Fetches into the Hugging Face cache (``HF_HOME``, else ``~/.cache/huggingface``) what the engines load:
the STT and TTS repositories' ``config.json`` and the files it names (LM, Mimi, tokenizer), and the
configured voices of the voice repository (the TTS default voice, the plugin's voice and every per-gym
hub voice). Each file shows a download progress bar (huggingface_hub's) and is then verified against the
hub's own metadata: its size, and for LFS files its SHA-256. A file already in the cache is not
downloaded again (one HEAD request each). Afterwards the engines start with ``HF_HUB_OFFLINE=1``.

Repositories and voices come from the engines' and plugins' settings (``KYUTAI_STT_CHECKPOINT``,
``KYUTAI_TTS_CHECKPOINT``, ``KYUTAI_TTS_VOICE_REPO``, ``KYUTAI_TTS_DEFAULT_VOICE``, ``KYUTAI_TTS_VOICE``,
``KYUTAI_TTS_GYM_VOICES``). ``HF_ENDPOINT`` selects another hub (the tests' stand-in).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import HfApi, hf_hub_download, try_to_load_from_cache
from huggingface_hub.hf_api import RepoSibling

# config.json keys naming the files moshi's loader reads (CheckpointInfo.from_hf_repo).
_FILE_KEYS = ("moshi_name", "mimi_name", "tokenizer_name", "mimi_config_name", "lora_name")


class FetchError(RuntimeError):
    """A file could not be fetched, or does not match the hub's size or SHA-256."""


@dataclass
class FetchReport:
    fetched: list[str] = field(default_factory=list)  # "repo/file" downloaded by this run
    present: list[str] = field(default_factory=list)  # already in the cache
    bytes_total: int = 0  # size of every wanted file, fetched or present
    seconds: float = 0.0


@dataclass(frozen=True)
class Wanted:
    """What the engines need: two checkpoint repos and the voices of one voice repo."""

    stt_repo: str
    tts_repo: str
    voice_repo: str
    voices: tuple[str, ...]

    @classmethod
    def from_settings(cls) -> Wanted:
        # The plugin settings are light (pydantic); the engine settings too: neither imports torch.
        from kyutai_stt.settings import EngineSettings as SttEngineSettings
        from kyutai_tts.settings import EngineSettings as TtsEngineSettings
        from kyutai_tts.settings import PluginSettings as TtsPluginSettings

        tts = TtsEngineSettings()
        plugin = TtsPluginSettings()
        # A per-gym voice ending in .safetensors is a local embedding file, not a hub voice.
        names = [tts.default_voice, plugin.voice, *plugin.gym_voices.values()]
        voices = tuple(dict.fromkeys(name for name in names if not name.endswith(".safetensors")))
        return cls(SttEngineSettings().checkpoint, tts.checkpoint, tts.voice_repo, voices)


def checkpoint_files(config: dict[str, object]) -> list[str]:
    """The files of a checkpoint repo that moshi's loader reads, as its config.json names them."""
    names = [config.get(key) for key in _FILE_KEYS]
    return ["config.json", *(name for name in names if isinstance(name, str) and name)]


def voice_suffix(tts_config: dict[str, object]) -> str:
    """The suffix moshi's TTSModel appends to a voice name (`<voice>.<sig>@<epoch>.safetensors`)."""
    model_id = tts_config.get("model_id")
    if not isinstance(model_id, dict) or "sig" not in model_id or "epoch" not in model_id:
        raise FetchError("the TTS config.json has no model_id {sig, epoch}: cannot name its voices")
    return f".{model_id['sig']}@{model_id['epoch']}.safetensors"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_file(path: Path, sibling: RepoSibling | None, label: str, *, sha256: bool = True) -> None:
    """Raises FetchError unless `path` has the hub's size (and SHA-256 for an LFS file, when `sha256`)."""
    if sibling is None:
        raise FetchError(f"{label}: not listed in the repository's files")
    size = path.stat().st_size
    expected = sibling.lfs.size if sibling.lfs is not None else sibling.size
    if expected is not None and size != expected:
        raise FetchError(f"{label}: {size} bytes on disk, the hub lists {expected}")
    if sha256 and sibling.lfs is not None and _sha256(path) != sibling.lfs.sha256:
        raise FetchError(f"{label}: SHA-256 differs from the hub's {sibling.lfs.sha256}")


class Fetcher:
    """`rehash_present`: hash files already in the cache again (``make models``); the demo, which runs
    this at every start, checks only their sizes (hashing ~6.5 GB takes tens of seconds)."""

    def __init__(
        self, endpoint: str | None = None, log: Callable[[str], None] = print, *, rehash_present: bool = True
    ) -> None:
        self._endpoint = endpoint
        self._rehash_present = rehash_present
        self._api = HfApi(endpoint=endpoint)
        self._log = log
        self._siblings: dict[str, dict[str, RepoSibling]] = {}
        self.report = FetchReport()

    def _sibling(self, repo: str, filename: str) -> RepoSibling | None:
        if repo not in self._siblings:
            info = self._api.model_info(repo, files_metadata=True, timeout=30)
            self._siblings[repo] = {sibling.rfilename: sibling for sibling in info.siblings or []}
        return self._siblings[repo].get(filename)

    def fetch(self, repo: str, filename: str) -> Path:
        """One file into the cache (progress bar while it downloads), verified; its local path."""
        label = f"{repo}/{filename}"
        cached = try_to_load_from_cache(repo, filename)
        try:
            path = Path(hf_hub_download(repo, filename, endpoint=self._endpoint))
        except Exception as exc:  # the hub client raises many kinds (HTTP, offline, timeouts)
            raise FetchError(f"{label}: {exc}") from exc
        present = isinstance(cached, str)
        verify_file(path, self._sibling(repo, filename), label, sha256=self._rehash_present or not present)
        (self.report.present if present else self.report.fetched).append(label)
        self.report.bytes_total += path.stat().st_size
        self._log(f"{'present' if present else 'fetched'}  {label}  ({_size(path)}, verified)")
        return path

    def checkpoint(self, repo: str) -> dict[str, object]:
        """A checkpoint repo's config.json and every file it names; the parsed config."""
        config: dict[str, object] = json.loads(self.fetch(repo, "config.json").read_text())
        for filename in checkpoint_files(config)[1:]:
            self.fetch(repo, filename)
        return config

    def all(self, wanted: Wanted) -> FetchReport:
        start = time.monotonic()
        self.checkpoint(wanted.stt_repo)
        tts_config = self.checkpoint(wanted.tts_repo)
        suffix = voice_suffix(tts_config)
        for voice in wanted.voices:
            self.fetch(wanted.voice_repo, f"{voice}{suffix}")
        self.report.seconds = time.monotonic() - start
        return self.report


def _size(path: Path) -> str:
    return _bytes(path.stat().st_size)


def _bytes(size: int) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def fetch_models(endpoint: str | None = None, log: Callable[[str], None] = print) -> FetchReport:
    """Everything the engines need, as the settings name it, in the Hugging Face cache and verified."""
    return Fetcher(endpoint, log).all(Wanted.from_settings())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--endpoint", default=None, help="the hub (default: HF_ENDPOINT, else huggingface.co)")
    args = parser.parse_args(argv)
    try:
        report = fetch_models(args.endpoint)
    except FetchError as exc:
        # A damaged cached file is not fetched again by the hub client: it must be deleted first.
        print(
            f"models: {exc} (a damaged cached file: remove its repo folder under $HF_HOME/hub and run again)",
            file=sys.stderr,
        )
        return 1
    print(
        f"models: {len(report.fetched)} files fetched, {len(report.present)} already present,"
        f" {_bytes(report.bytes_total)} in all, verified in {report.seconds:.1f} s;"
        " the engines can now start with HF_HUB_OFFLINE=1",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
