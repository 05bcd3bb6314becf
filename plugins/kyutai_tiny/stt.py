"""A tiny random-weight Kyutai STT checkpoint (Mimi + STT LM with end-of-speech heads + tokenizer).

`write_tiny_stt(directory)` writes the files in the layout of `kyutai/stt-1b-en_fr-candle`: a
`config.json` that names the other files (`moshi_name`, `mimi_name`, `mimi_config_name`,
`tokenizer_name`), holds the LM config, `stt_config` and the extra heads, and the weight files.
It is read back by `moshi.models.loaders.CheckpointInfo.from_hf_repo` like the real one.

The weights are random, then two output layers are fitted so that the tests prove something:
- the text head gives padding on silence and a mix of word pieces and word boundaries on speech
  (raw random heads tend to emit one token forever);
- class 0 of each extra head (the pause probability) is high on silence and low on speech.
Both are fitted by least squares on the LM's own features over synthetic speech with pauses.
File names and shapes deliberately differ from the real checkpoint's so that nothing downstream
can assume them.
"""

from __future__ import annotations

import argparse
import json
import typing
from pathlib import Path
from typing import Any

import numpy as np
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel

from .common import (
    build_tiny_mimi,
    save_state_dict,
    synthetic_speech,
    tiny_mimi_config,
    tokenizer_size,
    write_json,
    write_tiny_tokenizer,
)

MOSHI_NAME = "stt-tiny-lm.safetensors"
MIMI_NAME = "mimi-tiny@1.safetensors"
MIMI_CONFIG_NAME = "mimi-tiny-config.json"
TOKENIZER_NAME = "tokenizer-tiny-fr.model"

TEXT_PADDING_ID = 3
END_OF_WORD_ID = 0


def tiny_stt_lm_config(
    *,
    text_card: int,
    n_q: int = 4,
    card: int = 64,
    dim: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    delays: list[int] | None = None,
    extra_heads: int = 4,
    extra_heads_dim: int = 6,
) -> dict[str, Any]:
    """The LM part of a tiny STT `config.json` (the keys `loaders.get_moshi_lm` takes)."""
    config: dict[str, Any] = {
        "dim": dim,
        "text_card": text_card,
        "existing_text_padding_id": TEXT_PADDING_ID,
        "n_q": n_q,
        "dep_q": 0,
        "card": card,
        "num_heads": num_heads,
        "num_layers": num_layers,
        "hidden_scale": 2.0,
        "causal": True,
        "layer_scale": None,
        "context": 375,
        "max_period": 10000,
        "gating": "silu",
        "norm": "rms_norm_f32",
        "positional_embedding": "rope",
        "depformer_dim": 16,
        "depformer_dim_feedforward": 32,
        "depformer_num_heads": 1,
        "depformer_num_layers": 1,
        "depformer_layer_scale": None,
        "depformer_multi_linear": True,
        "depformer_context": 8,
        "depformer_max_period": 10000,
        "depformer_gating": "silu",
        "depformer_pos_emb": "none",
        "depformer_weights_per_step": True,
        # An acoustic delay on the deeper codebooks, unlike the real model: the engine must
        # follow LMGen's own delay handling rather than assume none.
        "delays": delays if delays is not None else [0, 0] + [1] * (n_q - 1),
    }
    if extra_heads:
        config["extra_heads_num_heads"] = extra_heads
        config["extra_heads_dim"] = extra_heads_dim
    return config


@torch.no_grad()
def real_size_stt_lm_config(*, text_card: int = 8000) -> dict[str, Any]:
    """The shapes of kyutai/stt-1b-en_fr's LM (as published in its config), for random-weight
    benchmarks: 2048-wide, 16 layers, 32 audio codebooks of 2048 codes, four pause heads."""
    config = tiny_stt_lm_config(
        text_card=text_card, n_q=32, card=2048, dim=2048, num_layers=16, num_heads=16, delays=[0] * 33
    )
    config.update({"hidden_scale": 4.125, "context": 750, "max_period": 100000})
    return config


def _silence_codes(mimi: MimiModel, seed: int) -> set[int]:
    """The first-codebook codes Mimi gives to silence, after speech and from a cold start."""
    audio = np.concatenate(
        [np.zeros(mimi.frame_size * 4, np.float32), synthetic_speech(1.0, mimi.sample_rate, seed + 7),
         np.zeros(mimi.frame_size * 12, np.float32)]
    )
    x = torch.from_numpy(audio)[None, None]
    codes: list[int] = []
    with mimi.streaming(1):
        for start in range(0, x.shape[-1] - mimi.frame_size + 1, mimi.frame_size):
            codes.append(int(mimi.encode(x[..., start : start + mimi.frame_size])[0, 0, 0]))
    return set(codes[:4]) | set(codes[-8:])


@torch.no_grad()
def _shape_heads(lm: LMModel, mimi: MimiModel, seed: int) -> None:
    """Give the random LM a silence feature and heads that read it.

    One model dimension is reserved: only the first-codebook embeddings of silence and of the
    start of the stream carry it (strongly), so it survives the residual stream to the output.
    The padding row of the text head and class 0 of every extra head read it; other text rows
    are random and sharpened so that the argmax follows the audio on speech.
    """
    generator = torch.Generator().manual_seed(seed)
    silent = sorted(_silence_codes(mimi, seed))
    feature = lm.dim - 1
    embeddings = [typing.cast(torch.Tensor, module.weight) for module in lm.emb]
    for emb_weight in [*embeddings, lm.text_emb.weight]:
        emb_weight[:, feature] = 0.0
    embeddings[0][silent, feature] = 8.0
    # A stream's first step reads only moshi's start-of-sequence tokens (its first frame's codes
    # are never read). A trained STT answers padding there; a random start token gives a junk
    # word at the start of every stream, so the start reads as silence too. (Only the first
    # codebook's start token: the delayed codebooks also read it on the second step, on speech.)
    embeddings[0][lm.initial_token_id, feature] = 8.0

    text_weight: torch.Tensor = lm.text_linear.weight
    weight = text_weight.float()
    weight[:, feature] = 0.0
    weight *= 6.0  # sharper random logits: the argmax moves with the audio rather than sticking
    weight[END_OF_WORD_ID] *= 1.6  # word boundaries often enough to split words
    weight[TEXT_PADDING_ID] = 0.0
    weight[TEXT_PADDING_ID, feature] = 4.0
    text_weight.copy_(weight.to(text_weight.dtype))
    head_weights = [typing.cast(torch.Tensor, module.weight) for module in lm.extra_heads]
    for index, head_weight in enumerate(head_weights):
        new_weight = 0.05 * torch.randn(tuple(head_weight.shape), generator=generator)
        new_weight[:, feature] = 0.0
        # Longer-pause heads answer a little less readily, as the real ones do.
        new_weight[0, feature] = 1.5 - 0.1 * index
        head_weight.copy_(new_weight.to(head_weight.dtype))


def build_tiny_stt_lm(lm_config: dict[str, Any], mimi: MimiModel, *, seed: int = 0) -> LMModel:
    """A random STT LM built by moshi's loader, its text and pause heads fitted on `mimi`'s codes."""
    torch.manual_seed(seed)
    lm = loaders.get_moshi_lm(None, lm_kwargs=lm_config, device="cpu", dtype=torch.float32)
    lm.eval()
    _shape_heads(lm, mimi, seed)
    return lm


def write_tiny_stt(
    directory: Path,
    *,
    seed: int = 0,
    extra_heads: bool = True,
    audio_delay_seconds: float = 0.5,
    audio_silence_prefix_seconds: float = 0.0,
    lm_overrides: dict[str, Any] | None = None,
    mimi_overrides: dict[str, Any] | None = None,
    real_size: bool = False,
    real_mimi: bool = False,
) -> Path:
    """Write a tiny STT checkpoint into `directory`; returns the path of its `config.json`.

    `extra_heads=False` writes a checkpoint without end-of-speech heads (like `kyutai/stt-1b-en_fr`).
    `real_size=True` writes random weights in the real model's shapes (about 1B parameters: for
    benchmarks on a GPU machine), with the real Mimi config and random codebooks.
    `real_mimi=True` keeps the tiny LM but gives it the real Mimi (random weights, codebooks fitted
    on speech-like audio as the tiny Mimi's are): the layout Kyutai's Rust moshi-server can load
    too, as it builds its Mimi from the real config alone.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer_path = write_tiny_tokenizer(directory / TOKENIZER_NAME)
    if real_size:
        lm_config = real_size_stt_lm_config()
        if not extra_heads:
            lm_config.pop("extra_heads_num_heads")
            lm_config.pop("extra_heads_dim")
        mimi_config: dict[str, Any] = json.loads(json.dumps(loaders._mimi_config))
    else:
        lm_config = tiny_stt_lm_config(
            text_card=tokenizer_size(tokenizer_path), extra_heads=4 if extra_heads else 0, **(lm_overrides or {})
        )
        if real_mimi:
            mimi_config = json.loads(json.dumps(loaders._mimi_config))
            lm_config["card"] = mimi_config["quantizer"]["bins"]
        else:
            n_q_mimi = max(8, lm_config["n_q"])
            mimi_config = tiny_mimi_config(n_q=n_q_mimi, bins=lm_config["card"], **(mimi_overrides or {}))
    mimi = build_tiny_mimi(mimi_config, seed=seed, kmeans=not real_size)
    save_state_dict(mimi, directory / MIMI_NAME)
    write_json(directory / MIMI_CONFIG_NAME, mimi_config)

    mimi.set_num_codebooks(lm_config["n_q"])
    lm = build_tiny_stt_lm(lm_config, mimi, seed=seed)
    save_state_dict(lm, directory / MOSHI_NAME)

    config = dict(lm_config)
    config.update(
        {
            "model_type": "stt",
            "moshi_name": MOSHI_NAME,
            "mimi_name": MIMI_NAME,
            "mimi_config_name": MIMI_CONFIG_NAME,
            "tokenizer_name": TOKENIZER_NAME,
            "lm_gen_config": {"temp": 0.0, "temp_text": 0.0, "top_k": 50, "top_k_text": 25},
            "stt_config": {
                "audio_silence_prefix_seconds": audio_silence_prefix_seconds,
                "audio_delay_seconds": audio_delay_seconds,
            },
        }
    )
    return write_json(directory / "config.json", config)


def main() -> None:
    parser = argparse.ArgumentParser(description="Write a tiny random-weight Kyutai STT checkpoint.")
    parser.add_argument("directory", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-extra-heads", action="store_true")
    parser.add_argument("--real-size", action="store_true", help="the real model's shapes, random weights")
    args = parser.parse_args()
    print(
        write_tiny_stt(
            args.directory, seed=args.seed, extra_heads=not args.no_extra_heads, real_size=args.real_size
        )
    )


if __name__ == "__main__":
    main()
