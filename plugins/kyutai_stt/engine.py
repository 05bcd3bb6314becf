"""The batched Kyutai STT model: one Mimi + one LM stepped for every live stream at once.

`SttEngine.step` takes one 80 ms frame for some of the slots and runs Mimi's encoder and the LM
once for the whole batch; slots without a frame are left untouched through moshi's execution
mask, and a slot given to a new stream is reset alone. The engine is not thread-safe: the server
calls every method from one worker thread, never from the event loop.

The engine speaks in domain events (`Word`, `EndWord`, and each step's pause probabilities);
the server turns them into protocol messages. Text follows moshi-server's rules: ids above the
padding id are word pieces, a padding or end-of-word id (0) ends the word (`Word`, stamped with
the previous boundary's time), an end-of-word id also closes it (`EndWord`). Times are model
frames / frame rate minus the checkpoint's text delay (and the silence prefix the engine fed),
i.e. seconds of the client's audio.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece
import torch
from kyutai_common.checkpoint import CheckpointError, checkpoint_info, resolve_device, resolve_dtype
from moshi.models import LMGen, loaders
from moshi.models.compression import MimiModel
from moshi.models.lm import LMModel
from safetensors import safe_open

from . import protocol

__all__ = [
    "CheckpointError",
    "EndWord",
    "SlotOutput",
    "StepStats",
    "SttCheckpoint",
    "SttEngine",
    "Word",
    "load_checkpoint",
]

logger = logging.getLogger("kyutai_stt.engine")

END_OF_WORD_ID = 0


@dataclass
class SttCheckpoint:
    """Everything loaded from one checkpoint, through moshi's own loader."""

    mimi: MimiModel
    lm: LMModel
    tokenizer: sentencepiece.SentencePieceProcessor
    info: loaders.CheckpointInfo
    audio_delay_seconds: float
    audio_silence_prefix_seconds: float
    padding_token_id: int

    @property
    def frame_size(self) -> int:
        return int(self.mimi.frame_size)

    @property
    def frame_rate(self) -> float:
        return float(self.mimi.frame_rate)

    @property
    def has_pause_heads(self) -> bool:
        return len(self.lm.extra_heads) > 0


def _extra_heads_in_weights(weights: Path) -> dict[str, int]:
    """Extra-head settings read from the weight file, for configs that do not declare them
    (kyutai/stt-1b-en_fr-candle's heads are in its weights)."""
    if weights.suffix not in (".safetensors", ".sft", ".sfts"):
        return {}
    heads: dict[int, int] = {}
    with safe_open(str(weights), framework="pt") as handle:
        for key in handle.keys():
            parts = key.split(".")
            if len(parts) == 3 and parts[0] == "extra_heads" and parts[2] == "weight":
                heads[int(parts[1])] = int(handle.get_slice(key).get_shape()[0])
    if not heads:
        return {}
    return {"extra_heads_num_heads": len(heads), "extra_heads_dim": next(iter(heads.values()))}


def load_checkpoint(
    source: str,
    device: str = "auto",
    dtype: str = "auto",
    *,
    audio_delay_s: float | None = None,
    silence_prefix_s: float | None = None,
) -> SttCheckpoint:
    """Load Mimi, the LM and the tokenizer of an STT checkpoint with moshi's loaders.

    `audio_delay_s` / `silence_prefix_s` override the config's `stt_config` values.
    """
    info = checkpoint_info(source)
    if info.model_type != "stt":
        logger.warning("checkpoint model_type is %r, not 'stt'", info.model_type)
    if info.lm_config is None:
        raise CheckpointError("the checkpoint has no LM config")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    overrides: dict[str, Any] = {}
    if "extra_heads_num_heads" not in info.lm_config:
        overrides = _extra_heads_in_weights(Path(info.moshi_weights))
    lm = info.get_moshi(device=torch_device, dtype=torch_dtype, lm_kwargs_overrides=overrides)
    if lm.dep_q != 0:
        raise CheckpointError(f"not a speech-to-text LM: it generates {lm.dep_q} audio codebooks")
    # moshi's loader builds an empty provider for a config with `"conditioners": {}`; it
    # conditions nothing (no fuser, no tensors to give LMGen), so such checkpoints run as any other.
    provider = lm.condition_provider
    if lm.fuser is not None or (provider is not None and len(provider.conditioners) > 0):
        raise CheckpointError("conditioned STT checkpoints are not supported")
    mimi = info.get_mimi(device=torch_device)
    needed = lm.n_q - lm.dep_q
    if mimi.num_codebooks < needed:
        raise CheckpointError(f"Mimi gives {mimi.num_codebooks} codebooks, the LM reads {needed}")
    stt_config = dict(info.stt_config or {})
    if audio_delay_s is not None:
        stt_config["audio_delay_seconds"] = audio_delay_s
    if silence_prefix_s is not None:
        stt_config["audio_silence_prefix_seconds"] = silence_prefix_s
    if "audio_delay_seconds" not in stt_config:
        logger.warning("the checkpoint's config has no stt_config.audio_delay_seconds: assuming 5.0 s")
    # Kyutai's reference script falls back to these when the config is silent.
    return SttCheckpoint(
        mimi=mimi,
        lm=lm,
        tokenizer=info.get_text_tokenizer(),
        info=info,
        audio_delay_seconds=float(stt_config.get("audio_delay_seconds", 5.0)),
        audio_silence_prefix_seconds=float(stt_config.get("audio_silence_prefix_seconds", 1.0)),
        padding_token_id=int((info.raw_config or {}).get("text_padding_token_id", lm.existing_text_padding_id)),
    )


@dataclass
class SlotState:
    """Per-stream decoding state (what moshi-server keeps per batch item)."""

    steps: int = 0  # model steps run for this stream (silence prefix included)
    outputs: int = 0  # text tokens produced (steps minus the LM's own delay)
    word_tokens: list[int] = field(default_factory=list)
    last_stop_time: float = 0.0
    unended_word: bool = False
    end_of_word_seen: bool = False  # an end-of-word id came since the last Word
    word_start: float = 0.0  # the start of the word being read


@dataclass(frozen=True, slots=True)
class Word:
    """A word is complete; `start_time` in seconds of the client's audio. `end_time`: when its
    last piece came (the padding that closed it), what the server sends as its `EndWord` when
    a Marker closes the turn before the next word does (moshi-server would send none)."""

    text: str
    start_time: float
    end_time: float


@dataclass(frozen=True, slots=True)
class EndWord:
    """The last word ended at `stop_time`."""

    stop_time: float


@dataclass
class SlotOutput:
    """What one step produced for one slot."""

    step: int  # steps run for this stream, this one included
    words: list[Word | EndWord]
    text_token: int | None  # None while the LM's own delay is not yet filled
    codes: torch.Tensor  # [K] audio codes fed to the LM this step
    prs: list[float]  # per end-of-speech head, the probability of a pause (empty without heads)


@dataclass
class StepStats:
    batch_size: int
    active: int
    seconds: float


class SttEngine:
    """A fixed batch of `max_streams` slots, stepped together; see the module docstring."""

    def __init__(
        self,
        checkpoint: SttCheckpoint,
        max_streams: int,
        *,
        temperature: float = 0.0,
        silence_prefix: bool = True,
    ) -> None:
        self.checkpoint = checkpoint
        self.max_streams = max_streams
        self.device = next(checkpoint.lm.parameters()).device
        self.lm_gen = LMGen(
            checkpoint.lm,
            use_sampling=temperature > 0,
            temp=temperature,
            temp_text=temperature,
            # Per-slot resets must not hold back the whole batch: with this, LMGen returns every
            # step and marks the slots still inside the acoustic delay as ungenerated.
            support_out_of_sync=True,
        )
        self.mimi = checkpoint.mimi
        self.mimi.streaming_forever(max_streams)
        self.lm_gen.streaming_forever(max_streams)
        self.slots: list[SlotState | None] = [None] * max_streams
        self._vocabulary_size = int(checkpoint.tokenizer.get_piece_size())
        self._pending_reset = torch.zeros(max_streams, dtype=torch.bool)
        self.prefix_frames = (
            protocol.frames_for(checkpoint.audio_silence_prefix_seconds) if silence_prefix else 0
        )
        # Word times in the client's audio: minus the prefix we fed and the text delay. (Kyutai's
        # script truncates the prefix to whole seconds; the exact value keeps times on the audio.)
        self.time_offset = self.prefix_frames / checkpoint.frame_rate + checkpoint.audio_delay_seconds
        # Steps before a token reflects the audio of a given step: the text delay plus LMGen's.
        self.delay_steps = math.ceil(checkpoint.audio_delay_seconds * checkpoint.frame_rate) + int(
            self.lm_gen.max_delay
        )

    @property
    def frame_size(self) -> int:
        return self.checkpoint.frame_size

    @property
    def frame_rate(self) -> float:
        return self.checkpoint.frame_rate

    @property
    def streams_in_use(self) -> int:
        return sum(1 for slot in self.slots if slot is not None)

    def open_slot(self) -> int | None:
        """Take a free slot for a new stream (reset before its first step); None when full."""
        for index, slot in enumerate(self.slots):
            if slot is None:
                self.slots[index] = SlotState()
                self._pending_reset[index] = True
                return index
        return None

    def close_slot(self, index: int) -> None:
        self.slots[index] = None

    @torch.no_grad()
    def warmup(self, steps: int) -> None:
        """Run the whole batch a few times (allocations, kernels), then reset every slot."""
        silence = np.zeros(self.frame_size, dtype=np.float32)
        for _ in range(steps):
            self._forward({index: silence for index in range(self.max_streams)})
        self._reset(torch.ones(self.max_streams, dtype=torch.bool))

    def _reset(self, mask: torch.Tensor) -> None:
        device_mask = mask.to(self.device)
        self.mimi.reset_streaming(device_mask)
        self.lm_gen.reset_streaming(device_mask)

    @torch.no_grad()
    def _forward(
        self, frames: dict[int, np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor], torch.Tensor]:
        batch = np.zeros((self.max_streams, 1, self.frame_size), dtype=np.float32)
        mask = torch.zeros(self.max_streams, dtype=torch.bool)
        for index, frame in frames.items():
            batch[index, 0] = frame
            mask[index] = True
        device_mask = mask.to(self.device)
        self.mimi.set_exec_mask(device_mask)
        self.lm_gen.set_exec_mask(device_mask)
        pcm = torch.from_numpy(batch).to(self.device)
        codes = self.mimi.encode(pcm)
        result = self.lm_gen.step_with_extra_heads(codes)
        assert result is not None  # support_out_of_sync: never None
        tokens, heads = result
        return mask, codes, heads, tokens

    def step(self, frames: dict[int, np.ndarray]) -> tuple[dict[int, SlotOutput], StepStats]:
        """Run one model step for the slots in `frames` (slot -> `frame_size` float32 samples)."""
        started = time.perf_counter()
        if bool(self._pending_reset.any()):
            self._reset(self._pending_reset.clone())
            self._pending_reset.zero_()
        _, codes, heads, tokens = self._forward(frames)
        tokens_cpu = tokens[:, 0, 0].to("cpu").tolist()
        codes_cpu = codes[:, :, 0].to("cpu")
        prs_cpu = (
            torch.stack([head[:, 0, 0].float() for head in heads], dim=1).to("cpu").tolist()
            if heads
            else [[] for _ in range(self.max_streams)]
        )
        outputs: dict[int, SlotOutput] = {}
        for index in frames:
            slot = self.slots[index]
            if slot is None:
                continue
            slot.steps += 1
            token = int(tokens_cpu[index])
            words: list[Word | EndWord] = []
            text_token: int | None = None
            if token >= 0:  # negative: LMGen's own delay is not filled yet for this slot
                text_token = token
                slot.outputs += 1
                words = self._words(slot, token)
            prs = [float(p) for p in prs_cpu[index]]
            outputs[index] = SlotOutput(slot.steps, words, text_token, codes_cpu[index], prs)
        stats = StepStats(self.max_streams, len(frames), time.perf_counter() - started)
        return outputs, stats

    def _time(self, outputs: int) -> float:
        return max(0.0, outputs / self.frame_rate - self.time_offset)

    def _words(self, slot: SlotState, token: int) -> list[Word | EndWord]:
        """moshi-server's word rules (rust/moshi-core asr.rs), on one slot's new text token."""
        events: list[Word | EndWord] = []
        padding = self.checkpoint.padding_token_id
        if token in (padding, END_OF_WORD_ID):
            if slot.word_tokens:
                text = self.checkpoint.tokenizer.decode(slot.word_tokens)
                slot.word_tokens = []
                if text.strip():
                    events.append(Word(text.strip(), slot.word_start, self._time(slot.outputs)))
                    slot.unended_word = True
                    slot.end_of_word_seen = False
        elif token > padding and token < self._vocabulary_size:
            # (ids past the tokenizer's vocabulary can only come from a mismatched checkpoint)
            if not slot.word_tokens:
                # A word starts at the last end-of-word id, as moshi-server's do; a word without
                # one since the previous word (random tiny checkpoints) at its first piece, not
                # back at the previous word's start.
                slot.word_start = slot.last_stop_time if slot.end_of_word_seen else self._time(slot.outputs - 1)
            slot.word_tokens.append(token)
        if token == END_OF_WORD_ID:
            stop_time = self._time(slot.outputs)
            if slot.unended_word:
                slot.unended_word = False
                events.append(EndWord(stop_time))
            slot.last_stop_time = stop_time
            slot.end_of_word_seen = True
        return events
