"""The tiny checkpoint is a real checkpoint: moshi's loader reads it from its config, nothing assumed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from kyutai_stt.engine import CheckpointError, SttEngine, load_checkpoint
from moshi.models import loaders


def test_the_config_names_every_file_and_moshis_loader_reads_them(tiny_stt_dir: Path) -> None:
    config = json.loads((tiny_stt_dir / "config.json").read_text())
    for key in ("moshi_name", "mimi_name", "mimi_config_name", "tokenizer_name"):
        assert (tiny_stt_dir / config[key]).is_file()
    checkpoint = load_checkpoint(str(tiny_stt_dir), "cpu")
    assert isinstance(checkpoint.info, loaders.CheckpointInfo)
    assert checkpoint.info.model_type == "stt"
    assert checkpoint.mimi.num_codebooks == config["n_q"]  # max(dep_q, n_q - dep_q), read from the config
    assert len(checkpoint.lm.extra_heads) == 4 and checkpoint.has_pause_heads
    assert checkpoint.audio_delay_seconds == config["stt_config"]["audio_delay_seconds"]
    assert checkpoint.tokenizer.get_piece_size() <= config["text_card"]


def test_heads_missing_from_the_config_are_found_in_the_weights(tiny_stt_dir: Path, tmp_path: Path) -> None:
    """Like using kyutai/stt-1b-en_fr-candle's weights with a config that does not declare its heads."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_stt_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    del config["extra_heads_num_heads"], config["extra_heads_dim"]
    (copy / "config.json").write_text(json.dumps(config))
    assert len(load_checkpoint(str(copy), "cpu").lm.extra_heads) == 4


def test_a_checkpoint_without_heads_loads_and_steps_with_empty_prs(tiny_stt_no_heads_dir: Path) -> None:
    checkpoint = load_checkpoint(str(tiny_stt_no_heads_dir), "cpu")
    assert not checkpoint.has_pause_heads
    engine = SttEngine(checkpoint, max_streams=2)
    slot = engine.open_slot()
    assert slot is not None
    output = engine.step({slot: torch.zeros(engine.frame_size).numpy()})[0][slot]
    assert output.step == 1 and output.prs == [] and output.words == []


def test_broken_checkpoints_are_clear_errors(tiny_stt_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json"):
        load_checkpoint(str(tmp_path), "cpu")
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_stt_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    (copy / config["mimi_name"]).unlink()
    with pytest.raises(CheckpointError, match="mimi_name"):
        load_checkpoint(str(copy), "cpu")
    with pytest.raises(CheckpointError):
        load_checkpoint("not-a-repo-or-dir", "cpu")


def test_the_tiny_checkpoint_is_rebuilt_identically(tmp_path: Path, tiny_stt_dir: Path) -> None:
    from kyutai_tiny.stt import write_tiny_stt

    again = write_tiny_stt(tmp_path / "again").parent
    for name in ("config.json", json.loads((again / "config.json").read_text())["tokenizer_name"]):
        assert (again / name).read_bytes() == (tiny_stt_dir / name).read_bytes()


def test_the_tiny_model_hears_nothing_in_silence_from_the_first_frame(tiny_stt_dir: Path) -> None:
    """Real Kyutai STT answers padding on silence, the stream's start included: a word there would
    be a member's turn nobody said (it cut JARVIS's greeting short in the voice tests)."""
    from kyutai_tiny.common import synthetic_speech

    checkpoint = load_checkpoint(str(tiny_stt_dir), "cpu")
    engine = SttEngine(checkpoint, max_streams=1)
    slot = engine.open_slot()
    assert slot is not None
    frame = engine.frame_size
    silence = torch.zeros(frame * 25).numpy()
    tokens: list[int | None] = []
    words = []
    for audio in (silence, synthetic_speech(2.0, 24000, 42), silence):
        for start in range(0, len(audio) - frame + 1, frame):
            output = engine.step({slot: audio[start : start + frame]})[0][slot]
            tokens.append(output.text_token)
            words += output.words
    assert set(tokens[:25]) <= {None, checkpoint.padding_token_id}, tokens[:25]
    assert words, "the tiny model heard no word in speech either"
