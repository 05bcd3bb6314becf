"""Pieces shared by the tiny STT and TTS checkpoints: a random-weight Mimi and a small tokenizer.

Everything here is built with moshi's own classes (`moshi.models.loaders.get_mimi`) and written in
the files the real loader reads back, so tests exercise the real loading path. Nothing here is a
real model: the weights are random, only the shapes and the file formats are real.

Stable API (the TTS checkpoint builder uses it too):

- `tiny_mimi_config(...)`: a Mimi config dict in the layout `loaders.get_mimi` takes (and that a
  checkpoint's `mimi_config_name` JSON file holds).
- `build_tiny_mimi(config, seed=..., kmeans=True)`: a `MimiModel` with initialised codebooks, in
  eval mode (`kmeans=False`: random centroids, for real-size configs in benchmarks).
- `write_tiny_mimi(path, config, seed=...)`: the same, saved as safetensors; returns the path.
- `write_tiny_tokenizer(path, vocab_size=..., sentences=...)`: a sentencepiece model file
  (ids: 0 unk, 1 bos, 2 eos, 3 pad, as in Kyutai's tokenizers); byte-identical on every run.
- `save_state_dict(module, path)`: safetensors writer for any module (contiguous, untied copies).
- `synthetic_speech(seconds, sample_rate, seed)`: voiced-looking audio (harmonics, syllable
  envelope, pauses) used to initialise codebooks; also handy as test input.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
import torch
from moshi.models import loaders
from moshi.models.compression import MimiModel
from moshi.quantization.core_vq import EuclideanCodebook
from safetensors.torch import save_file

SAMPLE_RATE = 24000
FRAME_RATE = 12.5

# French gym-kiosk sentences: the tokenizer learns pieces that decode to plausible words.
FRENCH_SENTENCES: tuple[str, ...] = (
    "bonjour je voudrais réserver un cours de yoga demain matin",
    "est-ce que mon coach est disponible jeudi soir",
    "je veux annuler ma séance de musculation",
    "quels sont les horaires de la salle le dimanche",
    "montre-moi la vidéo de l'exercice pour les épaules",
    "j'ai mal au genou depuis la dernière séance",
    "combien de temps dure le cours de cardio",
    "merci beaucoup à bientôt",
    "je voudrais parler au responsable de la salle",
    "mon abonnement se termine quand",
    "peux-tu me proposer un programme pour débuter",
    "oui d'accord c'est parfait",
    "non merci pas aujourd'hui",
    "il fait beau je vais courir dehors",
    "la piscine est ouverte ce soir",
    "je cherche un partenaire pour la boxe",
)


def tiny_mimi_config(
    *,
    seanet_dimension: int = 16,
    n_filters: int = 2,
    quantizer_dimension: int = 8,
    n_q: int = 8,
    bins: int = 64,
    transformer_layers: int = 1,
    transformer_heads: int = 2,
    transformer_ff: int = 32,
    sample_rate: int = SAMPLE_RATE,
    frame_rate: float = FRAME_RATE,
) -> dict[str, Any]:
    """A Mimi config in `loaders.get_mimi`'s layout, with small dimensions.

    The SEANet ratios stay the real ones (product 960: 24 kHz -> 25 Hz encoder frames, then a
    learnt 2x downsample to 12.5 Hz), so a frame is 1920 samples as with the real Mimi.
    `n_q` is the number of codebooks the quantizer holds; the loader activates
    `max(dep_q, n_q - dep_q)` of them from the LM config.
    """
    seanet: dict[str, Any] = {
        "channels": 1,
        "dimension": seanet_dimension,
        "causal": True,
        "n_filters": n_filters,
        "n_residual_layers": 1,
        "activation": "ELU",
        "compress": 2,
        "dilation_base": 2,
        "disable_norm_outer_blocks": 0,
        "kernel_size": 7,
        "residual_kernel_size": 3,
        "last_kernel_size": 3,
        "norm": "none",
        "pad_mode": "constant",
        "ratios": [8, 6, 5, 4],
        "true_skip": True,
    }
    quantizer: dict[str, Any] = {
        "dimension": quantizer_dimension,
        "n_q": n_q,
        "bins": bins,
        "input_dimension": seanet_dimension,
        "output_dimension": seanet_dimension,
    }
    transformer: dict[str, Any] = {
        "d_model": seanet_dimension,
        "num_heads": transformer_heads,
        "num_layers": transformer_layers,
        "causal": True,
        "layer_scale": 0.01,
        "context": 250,
        "conv_layout": True,
        "max_period": 10000,
        "gating": "none",
        "norm": "layer_norm",
        "positional_embedding": "rope",
        "dim_feedforward": transformer_ff,
        "input_dimension": seanet_dimension,
        "output_dimensions": [seanet_dimension],
    }
    return {
        "sample_rate": sample_rate,
        "channels": 1,
        "frame_rate": frame_rate,
        "seanet": seanet,
        "quantizer": quantizer,
        "transformer": transformer,
    }


def synthetic_speech(seconds: float, sample_rate: int = SAMPLE_RATE, seed: int = 0) -> np.ndarray:
    """Speech-like float32 mono audio in [-1, 1]: voiced syllables with moving pitch, and pauses.

    Not intelligible; it only needs the spectral and temporal variety of speech so that codebooks
    initialised on it spread over their entries and a random LM sees varied codes.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    out = np.zeros(n, dtype=np.float64)
    pos = 0
    while pos < n:
        syllable = int(rng.uniform(0.08, 0.25) * sample_rate)
        pause = int(rng.choice([0.02, 0.05, 0.3], p=[0.6, 0.3, 0.1]) * sample_rate)
        end = min(n, pos + syllable)
        seg_t = t[pos:end]
        f0 = rng.uniform(90, 240) * (1 + 0.1 * np.sin(2 * np.pi * rng.uniform(1, 4) * seg_t))
        phase = 2 * np.pi * np.cumsum(f0) / sample_rate
        voiced = sum(rng.uniform(0.2, 1.0) / k * np.sin(k * phase) for k in range(1, 8))
        noise = rng.normal(0, rng.uniform(0.0, 0.3), end - pos)
        envelope = np.sin(np.linspace(0, np.pi, end - pos)) ** 2
        out[pos:end] = (voiced + noise) * envelope
        pos = end + pause
    peak = float(np.max(np.abs(out))) or 1.0
    return (0.5 * out / peak).astype(np.float32)


@torch.no_grad()
def _initialise_codebooks(mimi: MimiModel, seed: int) -> None:
    """Run Mimi's own k-means initialisation of its residual codebooks.

    Each residual level initialises only once the previous one is, so one train-mode pass per
    level is needed; afterwards every codebook has `bins` centroids fitted on speech-like latents.
    """
    total_levels = mimi.quantizer.total_codebooks
    mimi.set_num_codebooks(total_levels)
    bins = mimi.quantizer.cardinality
    frames_needed = 2 * bins
    seconds = max(4.0, frames_needed / mimi.frame_rate / 4 + 1)
    audio = torch.from_numpy(
        np.stack([synthetic_speech(seconds, mimi.sample_rate, seed + i) for i in range(4)])
    )[:, None, :]
    latent = mimi._encode_to_unquantized_latent(audio)
    mimi.quantizer.train()
    for _ in range(total_levels + 1):
        mimi.quantizer(latent, int(mimi.frame_rate))
    mimi.quantizer.eval()


@torch.no_grad()
def _random_codebooks(mimi: MimiModel, seed: int) -> None:
    """Random unit-variance centroids: no k-means (too slow for real-size codebooks on a CPU)."""
    generator = torch.Generator().manual_seed(seed)
    for module in mimi.quantizer.modules():
        if isinstance(module, EuclideanCodebook):
            module.embedding_sum.copy_(torch.randn(module.embedding_sum.shape, generator=generator))
            module.cluster_usage.fill_(1.0)
            module._initialized.fill_(1.0)
            module.register_buffer("_embedding", None, persistent=False)


def build_tiny_mimi(config: dict[str, Any] | None = None, *, seed: int = 0, kmeans: bool = True) -> MimiModel:
    """A random-weight Mimi built by `loaders.get_mimi`, codebooks initialised, in eval mode.

    `kmeans=False` fills the codebooks with random centroids instead of fitting them (for
    real-size configs used in benchmarks, where only the shapes matter).
    """
    config = config or tiny_mimi_config()
    torch.manual_seed(seed)
    mimi = loaders.get_mimi(None, config, device="cpu", num_codebooks=config["quantizer"]["n_q"])
    if kmeans:
        _initialise_codebooks(mimi, seed)
    else:
        _random_codebooks(mimi, seed)
    mimi.eval()
    return mimi


def save_state_dict(module: torch.nn.Module, path: Path) -> Path:
    """Write a module's state dict as safetensors (contiguous, untied copies: the format wants them)."""
    state = {key: value.detach().contiguous().clone() for key, value in module.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


def write_tiny_mimi(
    path: Path, config: dict[str, Any] | None = None, *, seed: int = 0, kmeans: bool = True
) -> Path:
    """Build a tiny Mimi and save its weights at `path` (safetensors). Returns `path`."""
    return save_state_dict(build_tiny_mimi(config, seed=seed, kmeans=kmeans), path)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False))
    return path


def write_tiny_tokenizer(
    path: Path, *, vocab_size: int = 160, sentences: Iterable[str] | None = None
) -> Path:
    """Train a small sentencepiece (unigram) model on French sentences and write it at `path`.

    Ids 0-3 are unk, bos, eos, pad as in Kyutai's tokenizers (3 is the text padding id and 0 the
    word boundary the STT emits). Trained from an iterator into an in-memory writer, so the file
    holds no path of this machine and is byte-identical on every run.
    """
    corpus = list(sentences or FRENCH_SENTENCES)
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus * 4),
        model_writer=writer,
        vocab_size=vocab_size,
        model_type="unigram",
        character_coverage=1.0,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=3,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(writer.getvalue())
    return path


def tokenizer_size(path: Path) -> int:
    """Number of pieces of a sentencepiece model (the LM's `text_card` must cover them)."""
    return int(spm.SentencePieceProcessor(model_file=str(path)).get_piece_size())


def frames(seconds: float) -> int:
    """Whole 80 ms frames in `seconds` (rounded up)."""
    return math.ceil(seconds * FRAME_RATE)
