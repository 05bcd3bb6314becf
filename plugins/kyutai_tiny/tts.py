"""A tiny random-weight Kyutai TTS checkpoint, written in the real repository layout.

The layout is that of `kyutai/tts-1.6b-en_fr` (a `config.json` naming the LM, Mimi and tokenizer
files, with `tts_config`, `model_id`, conditioners and fuser) plus a voice folder laid out like
`kyutai/tts-voices` (`<voice>.wav.<sig>@<epoch>.safetensors` holding `speaker_wavs` [1, C, T]).
Everything is read back by moshi's own loader (`CheckpointInfo.from_hf_repo` with local paths)
and `moshi.models.tts.TTSModel`; nothing downstream may assume the real model's shapes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from moshi.models import loaders
from moshi.models.lm import LMModel
from moshi.models.tts import TTSModel
from safetensors.torch import save_file

from .common import (
    save_state_dict,
    tiny_mimi_config,
    tokenizer_size,
    write_json,
    write_tiny_mimi,
    write_tiny_tokenizer,
)

MODEL_SIG = "7e57c0de"
MODEL_EPOCH = 1
DEFAULT_VOICE = "tiny/fr-default.wav"
OTHER_VOICE = "tiny/fr-coach.wav"
CFG_VALUES = ("1.0", "1.5", "2.0", "2.5", "3.0", "3.5", "4.0")  # the real checkpoint's list


@dataclass(frozen=True, slots=True)
class TinyTTS:
    """Where a written tiny TTS checkpoint lives."""

    directory: Path
    voice_dir: Path
    config: dict[str, Any]

    @property
    def config_path(self) -> Path:
        return self.directory / "config.json"

    @property
    def voice_suffix(self) -> str:
        return f".{MODEL_SIG}@{MODEL_EPOCH}.safetensors"

    def voice_path(self, name: str = DEFAULT_VOICE) -> Path:
        return self.voice_dir / f"{name}{self.voice_suffix}"

    def checkpoint_info(self) -> loaders.CheckpointInfo:
        """The checkpoint through moshi's loader, exactly as a local copy of a hub repo is read."""
        names = self.config
        mimi_config = names.get("mimi_config_name")
        return loaders.CheckpointInfo.from_hf_repo(
            str(self.directory),
            moshi_weights=self.directory / names["moshi_name"],
            mimi_weights=self.directory / names["mimi_name"],
            tokenizer=self.directory / names["tokenizer_name"],
            config_path=self.config_path,
            mimi_config_path=self.directory / mimi_config if mimi_config else None,
        )

    def load(self, *, device: str = "cpu", dtype: torch.dtype = torch.float32, **kwargs: Any) -> TTSModel:
        info = self.checkpoint_info()
        n_q = int(info.raw_config["dep_q"]) if info.raw_config else 1
        return TTSModel.from_checkpoint_info(info, n_q=n_q, device=device, dtype=dtype, **kwargs)


def tiny_tts_lm_config(
    *,
    text_card: int,
    card: int,
    n_q: int = 4,
    dim: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    depformer_dim: int = 16,
    depformer_layers: int = 1,
    acoustic_delay: int = 2,
    speaker_dim: int = 8,
) -> dict[str, Any]:
    """LM kwargs in the layout of the real TTS config (CFG-distilled, cross-attended voice)."""
    return {
        "dim": dim,
        "text_card": text_card,
        "existing_text_padding_id": 3,
        "n_q": n_q,
        "dep_q": n_q,
        "card": card,
        "num_heads": num_heads,
        "num_layers": num_layers,
        "hidden_scale": 4.125,
        "causal": True,
        "context": 500,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": depformer_dim,
        "depformer_num_heads": 2,
        "depformer_num_layers": depformer_layers,
        "depformer_dim_feedforward": 2 * depformer_dim,
        "depformer_multi_linear": True,
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        "depformer_low_rank_embeddings": max(4, depformer_dim // 2),
        "demux_second_stream": True,
        # Text and the semantic codebook at 0, acoustic codebooks later, as in Kyutai's models.
        "delays": [0, 0] + [acoustic_delay] * (n_q - 1),
        "cross_attention": True,
        "conditioners": {
            "speaker_wavs": {"type": "tensor", "tensor": {"dim": speaker_dim}},
            "cfg": {
                "type": "lut",
                "lut": {"n_bins": len(CFG_VALUES), "dim": 16, "tokenizer": "noop", "possible_values": list(CFG_VALUES)},
            },
            "control": {
                "type": "lut",
                "lut": {"n_bins": 2, "dim": 16, "tokenizer": "noop", "possible_values": ["ok", "also_good"]},
            },
        },
        "fuser": {
            "cross_attention_pos_emb": True,
            "cross_attention_pos_emb_scale": 1,
            "sum": ["control", "cfg"],
            "cross": ["speaker_wavs"],
        },
    }


@torch.no_grad()
def _shape_heads(lm: LMModel, *, pad_id: int, new_word_id: int) -> None:
    """Make greedy decoding of random weights meaningful.

    A random text head picks one arbitrary token forever; the TTS state machine only listens to
    "new word" and "pad", so those two rows are made dominant and input dependent: the model then
    starts words at data-dependent steps. Audio heads are sharpened so codes vary with the input.
    """
    weight = lm.text_linear.weight
    weight.mul_(0.2)
    weight[new_word_id].mul_(40.0)
    weight[pad_id].mul_(40.0)
    for linear in lm.linears:
        assert isinstance(linear, torch.nn.Linear)
        linear.weight.mul_(6.0)


def write_voice(path: Path, *, channels: int, frames: int, seed: int) -> Path:
    """A voice embedding file as kyutai/tts-voices ships them: `speaker_wavs` [1, C, T]."""
    generator = torch.Generator().manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"speaker_wavs": torch.randn(1, channels, frames, generator=generator)}, str(path))
    return path


def write_tiny_tts(
    directory: Path,
    *,
    seed: int = 0,
    n_q: int = 4,
    dim: int = 32,
    num_layers: int = 2,
    audio_delay_s: float = 0.32,
    second_stream_ahead: int = 2,
    speaker_dim: int = 8,
    voice_frames: int = 10,
    mimi_config: dict[str, Any] | None = None,
    lm_overrides: dict[str, Any] | None = None,
    initialise_mimi: bool = True,
    dtype: torch.dtype = torch.float32,
) -> TinyTTS:
    """Writes a tiny TTS checkpoint (config, LM, Mimi, tokenizer) and two voices under `directory`.

    The real model has `audio_delay` 1.28 s (16 steps); the default here is 0.32 s (4 steps) so
    tests reach audio quickly, while every code path that depends on the delay still runs.
    `lm_overrides`, `initialise_mimi=False` and `dtype=torch.bfloat16` serve the benchmark's
    real-size random weights (a TTS only decodes, so Mimi's codebooks need no k-means there).
    """
    directory.mkdir(parents=True, exist_ok=True)
    mimi_config = mimi_config or tiny_mimi_config(n_q=max(8, n_q))
    names = {
        "moshi_name": f"dsm_tts_{MODEL_SIG}@{MODEL_EPOCH}.safetensors",
        "mimi_name": "tiny_mimi.safetensors",
        "mimi_config_name": "tiny_mimi_config.json",
        "tokenizer_name": "tokenizer_spm_tiny_fr.model",
    }
    tokenizer_path = write_tiny_tokenizer(directory / names["tokenizer_name"])
    write_json(directory / names["mimi_config_name"], mimi_config)
    if initialise_mimi:
        write_tiny_mimi(directory / names["mimi_name"], mimi_config, seed=seed)
    else:
        torch.manual_seed(seed)
        n_codebooks = int(mimi_config["quantizer"]["n_q"])
        save_state_dict(loaders.get_mimi(None, mimi_config, num_codebooks=n_codebooks), directory / names["mimi_name"])

    lm_config = tiny_tts_lm_config(
        text_card=tokenizer_size(tokenizer_path),
        card=int(mimi_config["quantizer"]["bins"]),
        n_q=n_q,
        dim=dim,
        num_layers=num_layers,
        speaker_dim=speaker_dim,
    ) | (lm_overrides or {})
    torch.manual_seed(seed)
    # The loader mutates the conditioner sub-dicts: hand it a copy.
    lm = loaders.get_moshi_lm(None, lm_kwargs=json.loads(json.dumps(lm_config)), dtype=dtype)
    _shape_heads(lm, pad_id=3, new_word_id=0)
    save_state_dict(lm, directory / names["moshi_name"])

    config = {
        **names,
        "model_id": {"sig": MODEL_SIG, "epoch": MODEL_EPOCH},
        "tts_config": {"audio_delay": audio_delay_s, "second_stream_ahead": second_stream_ahead},
        "lm_gen_config": {"temp": 0.6, "temp_text": 0.6, "top_k": 250, "top_k_text": 50},
        **lm_config,
    }
    write_json(directory / "config.json", config)

    tiny = TinyTTS(directory=directory, voice_dir=directory / "voices", config=config)
    for index, name in enumerate((DEFAULT_VOICE, OTHER_VOICE)):
        write_voice(tiny.voice_path(name), channels=speaker_dim, frames=voice_frames, seed=seed + 100 + index)
    return tiny
