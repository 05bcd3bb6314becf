"""The batched TTS engine: every live stream of every session stepped together, one batch per frame.

One `TTSEngine` holds one copy of the model (`moshi.models.tts.TTSModel`) and a fixed number of
slots. Each step of its worker thread runs the LM once for the whole batch; the execution mask
leaves out the slots that are free or waiting for words, so streams join, pause and leave
without disturbing each other. Each slot keeps its own voice conditioning, text state machine,
sampling generator and Mimi decoder state.

Equivalence with `TTSModel.generate` (same weights, text, voice and seed) holds because:
- a slot only steps when moshi's state machine cannot need a word that has not arrived yet
  (it is feeding a word's tokens, is forced to pad, has the look-ahead words queued, or the text
  has ended) — so the machine sees exactly the entries it would have seen with the whole text;
- sampling is done per slot, with that slot's own generator, drawing the same random numbers in
  the same order as `LMGen`'s sampling with `torch.manual_seed(seed)` on one stream (text every
  step, audio only once the audio delay has passed, as `generate` skips the depformer before).
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from moshi.conditioners import ConditionAttributes, TensorCondition
from moshi.models.lm import LMGen
from moshi.models.tts import State, TTSModel, script_to_entries
from moshi.modules.transformer import StreamingMultiheadAttention
from safetensors.torch import load_file

logger = logging.getLogger("kyutai_tts.engine")


class EngineError(Exception):
    """Base of the engine's typed errors; the message is safe to send to a client. Raised as
    itself, the engine failed (another try may work)."""


class EngineFull(EngineError):
    """Every slot is taken."""


class RequestError(EngineError):
    """The stream asked for something the engine cannot do; asking again fails again."""


class VoiceError(RequestError):
    pass


class StreamSink(Protocol):
    """Where a stream's output goes. Called from the engine thread: implementations hand over to
    their own thread or event loop and return at once."""

    def audio(self, pcm: np.ndarray) -> None: ...

    def word(self, text: str, start_s: float, stop_s: float) -> None: ...

    def finished(self) -> None: ...

    def failed(self, error: EngineError) -> None: ...


@dataclass(frozen=True, slots=True)
class Conditioning:
    """A voice and guidance value, ready for the LM: the fuser's sum and cross-attention inputs."""

    sum: torch.Tensor | None
    cross: torch.Tensor | None


@dataclass(slots=True)
class StreamStats:
    steps: int = 0
    audio_frames: int = 0
    words: int = 0


@dataclass
class _Slot:
    """One batch row. `inbox` is filled by callers (under the engine lock); the rest is owned by
    the engine thread."""

    index: int
    stream_id: int = 0
    sink: StreamSink | None = None
    inbox: deque[tuple[str, Any]] = field(default_factory=deque)
    # engine-thread state
    conditioning: Conditioning | None = None
    state: State | None = None
    offset: int = 0  # steps done by this stream
    complete: bool = False  # the client sent Eos
    first_text: bool = True
    temperature: float = 0.6
    generator: torch.Generator | None = None
    words_sent: int = 0
    record_codes: bool = False  # tests: the sink also gets each frame's codes (`sink.codes`)
    stats: StreamStats = field(default_factory=StreamStats)

    @property
    def busy(self) -> bool:
        return self.sink is not None


class StreamHandle:
    """A caller's grip on one stream. Methods are thread-safe and never block on the model."""

    def __init__(self, engine: TTSEngine, slot: _Slot, stream_id: int) -> None:
        self._engine = engine
        self._slot = slot
        self.stream_id = stream_id

    def push_text(self, text: str) -> None:
        self._engine._post(self, "text", text)

    def end_text(self) -> None:
        self._engine._post(self, "eos", None)

    def set_voice(self, conditioning: Conditioning) -> None:
        """Replaces the voice; only before the first text (as moshi-server does)."""
        self._engine._post(self, "voice", conditioning)

    def close(self) -> None:
        """Stops the stream: its slot is free after the current step, at most one frame later."""
        self._engine._post(self, "close", None)


class TTSEngine:
    def __init__(
        self,
        tts_model: TTSModel,
        *,
        max_streams: int,
        default_voice: torch.Tensor | None,
        default_cfg_alpha: float | None,
        top_k: int = 250,
        top_k_text: int = 25,
        padding_between: int = 1,
        max_steps: int = 3000,
        cuda_graphs: bool = True,
    ) -> None:
        if tts_model.lm.condition_provider is None or tts_model.lm.fuser is None:
            raise EngineError("this engine serves checkpoints conditioned on a voice embedding")
        if tts_model.cfg_coef != 1.0:
            raise EngineError("this engine serves CFG-distilled checkpoints (guidance as a condition)")
        self.tts = tts_model
        self.lm = tts_model.lm
        self.mimi = tts_model.mimi
        self.machine = tts_model.machine
        self.max_streams = max_streams
        self.top_k = top_k
        self.top_k_text = top_k_text
        self.padding_between = padding_between
        self.max_steps = max_steps
        self.device = self.lm.device
        self.delay_steps = tts_model.delay_steps
        self.frame_rate = float(self.mimi.frame_rate)
        if not tts_model.multistream:
            # As `TTSModel.generate` does: generate only the codebooks Mimi decodes.
            self.lm.dep_q = tts_model.n_q
        self.max_delay = max(self.lm.delays)
        self._slots = [_Slot(index) for index in range(max_streams)]
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._next_stream_id = 1
        self._running = False
        self._thread: threading.Thread | None = None
        self.step_times_s: deque[float] = deque(maxlen=2000)
        self.batch_sizes: deque[int] = deque(maxlen=2000)
        self.total_steps = 0
        self.on_step: Callable[[float, int], None] | None = None  # (seconds, active streams): metrics
        # The engine thread died (a model step failed): nothing it serves can work any more, so the
        # server makes the process exit non-zero through this and the supervisor restarts it.
        self.crashed = False
        self.on_crash: Callable[[], None] | None = None

        self._cross_attentions = [
            module
            for module in self.lm.modules()
            if isinstance(module, StreamingMultiheadAttention) and module.cross_attention
        ]
        self.default_attributes = voice_attributes(tts_model, default_voice, default_cfg_alpha)
        assert self.lm.condition_provider is not None
        with torch.no_grad():
            batch_conditions = self.lm.condition_provider.prepare_and_provide([self.default_attributes] * max_streams)
        self.default_conditioning = self.conditioning_for(default_voice, default_cfg_alpha)
        self.lm_gen = LMGen(
            self.lm,
            use_sampling=False,  # we sample per slot in the hooks; LMGen takes the argmax of our choice
            temp=1.0,
            temp_text=1.0,
            cfg_coef=1.0,
            condition_tensors=batch_conditions,
            on_text_logits_hook=self._on_text_logits,
            on_text_hook=self._on_text,
            on_audio_hook=self._on_audio,
            # LMGen's global step counter restarts on every per-slot reset; per-slot offsets are
            # what matters, so ask for output at every step.
            support_out_of_sync=True,
        )
        self.lm_gen.streaming_forever(max_streams)
        self.mimi.streaming_forever(max_streams)
        state = self.lm_gen._streaming_state
        assert state is not None
        # The depformer runs its 32 codebooks one after another, each a handful of small kernels.
        # Run eagerly, this is the likely cause of the ~200 ms frames measured on an H200
        # (docs/gpu.md; not yet profiled there). Replayed as one CUDA graph, it launches once. The
        # graph records the sampling hooks too, so they read only the fixed buffers below and never
        # branch in Python on a step's data.
        self.cuda_graphs = cuda_graphs and self.device.type == "cuda"
        if state.graphed_depth is not None and not self.cuda_graphs:
            state.graphed_depth.disable = True
        text_k = min(self.top_k_text, self.lm.text_linear.out_features)
        audio_k = min(self.top_k, self.lm.card)
        # Per row: sampling temperature (1 where it does not sample), whether its text and its
        # audio are sampled this step (else greedy), and the step's random numbers.
        self._temperatures = torch.ones(max_streams, device=self.device)
        self._text_sampling = torch.zeros(max_streams, dtype=torch.bool, device=self.device)
        self._audio_sampling = torch.zeros(max_streams, dtype=torch.bool, device=self.device)
        self._text_noise = torch.ones(max_streams, text_k, device=self.device)
        self._audio_noise = torch.ones(max_streams, self.lm.dep_q, audio_k, device=self.device)
        self._input_tokens = torch.full(
            (max_streams, self.lm.n_q - self.lm.dep_q, 1),
            self.machine.token_ids.zero,
            dtype=torch.long,
            device=self.device,
        )
        self._no_depformer = torch.full(
            (max_streams, self.lm.dep_q, 1), self.machine.token_ids.zero, dtype=torch.long, device=self.device
        )
        # Per step: which rows execute and which of them make audio.
        self._exec_rows: list[int] = []
        self._audio_rows: list[int] = []
        self._original_forward_depformer = self.lm.forward_depformer

    # ----- conditioning -------------------------------------------------------------------

    def conditioning_for(self, speaker_wavs: torch.Tensor | None, cfg_alpha: float | None) -> Conditioning:
        """The LM inputs for one voice embedding ([1, C, T], as in kyutai/tts-voices) and a guidance value."""
        attributes = voice_attributes(self.tts, speaker_wavs, cfg_alpha)
        assert self.lm.condition_provider is not None and self.lm.fuser is not None
        with torch.no_grad():
            tensors = self.lm.condition_provider.prepare_and_provide([attributes])
            summed = self.lm.fuser.get_sum(tensors)
            cross = self.lm.fuser.get_cross(tensors)
        dtype = self.lm.dtype
        return Conditioning(
            sum=None if summed is None else summed.to(self.device, dtype),
            cross=None if cross is None else cross.to(self.device, dtype),
        )

    def _apply_conditioning(self, row: int, conditioning: Conditioning) -> None:
        state = self.lm_gen._streaming_state
        assert state is not None
        if conditioning.sum is not None and state.condition_sum is not None:
            state.condition_sum[row] = conditioning.sum[0]
        if conditioning.cross is not None and state.condition_cross is not None:
            if conditioning.cross.shape[1:] != state.condition_cross.shape[1:]:
                raise VoiceError(
                    f"voice length {tuple(conditioning.cross.shape[1:])} differs from the engine's "
                    f"{tuple(state.condition_cross.shape[1:])}"
                )
            state.condition_cross[row] = conditioning.cross[0]
            # Cross-attention keys/values are cached per row at the first step: refresh this row.
            for attention in self._cross_attentions:
                mha_state = attention._streaming_state
                if mha_state is None or mha_state.k_cross is None or mha_state.v_cross is None:
                    continue
                k, v = attention._compute_cross_attention(conditioning.cross, conditioning.cross)
                mha_state.k_cross[row] = k[0]
                mha_state.v_cross[row] = v[0]

    # ----- public API (any thread) --------------------------------------------------------

    def state_bytes(self) -> int:
        """Bytes of all per-stream streaming state (KV caches, conv buffers, conditioning):
        what each extra slot costs, divided by `max_streams`. The weights are not included."""
        seen: set[int] = set()
        total = 0

        def add(value: Any, depth: int = 0) -> None:
            nonlocal total
            if isinstance(value, torch.Tensor):
                if value.data_ptr() not in seen:
                    seen.add(value.data_ptr())
                    total += value.numel() * value.element_size()
            elif depth < 2 and hasattr(value, "__dict__") and not isinstance(value, torch.nn.Module):
                for item in vars(value).values():
                    add(item, depth + 1)

        for module in [self.lm_gen, *self.lm.modules(), *self.mimi.modules()]:
            state = getattr(module, "_streaming_state", None)
            if state is not None:
                add(state)
        return total

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def streams_in_use(self) -> int:
        with self._lock:
            return sum(1 for slot in self._slots if slot.busy)

    def open(
        self, sink: StreamSink, *, temperature: float, seed: int | None = None, conditioning: Conditioning | None = None
    ) -> StreamHandle:
        """Reserves a slot for a new stream; raises EngineFull at once when every slot is taken."""
        if self._thread is not None and not self._thread.is_alive():
            raise EngineError("the TTS engine has stopped")
        with self._lock:
            slot = next((slot for slot in self._slots if not slot.busy), None)
            if slot is None:
                raise EngineFull(f"no free channels ({self.max_streams} streams busy)")
            stream_id = self._next_stream_id
            self._next_stream_id += 1
            slot.stream_id = stream_id
            slot.sink = sink
            slot.inbox.clear()
            slot.inbox.append(("open", (temperature, seed, conditioning or self.default_conditioning)))
            self._wake.notify()
            return StreamHandle(self, slot, stream_id)

    def _post(self, handle: StreamHandle, kind: str, payload: Any) -> None:
        with self._lock:
            slot = handle._slot
            if slot.stream_id != handle.stream_id or slot.sink is None:
                return  # the stream already ended; late input is dropped
            slot.inbox.append((kind, payload))
            self._wake.notify()

    def start(self) -> None:
        if self._thread is not None:
            return
        self._running = True
        self._thread = threading.Thread(target=self._run, name="kyutai-tts-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    @torch.no_grad()
    def warmup(self, steps: int = 3) -> None:
        """Runs full-batch steps (and Mimi decodes) so kernels, caches and allocations are ready,
        and the depformer's CUDA graph is captured (its second call). Should the capture fail on
        this GPU or driver, the engine says so and runs the depformer eagerly: slower, not broken."""
        try:
            self._warmup(max(steps, 2) if self.cuda_graphs else steps)
        except RuntimeError:
            state = self.lm_gen._streaming_state
            if not self.cuda_graphs or state is None or state.graphed_depth is None:
                raise
            logger.exception("CUDA graph capture of the depformer failed: running it eagerly (slower)")
            torch.cuda.synchronize()
            self.cuda_graphs = False
            state.graphed_depth.reset()
            state.graphed_depth.disable = True
            self._warmup(steps)

    def _warmup(self, steps: int) -> None:
        everything = torch.ones(self.max_streams, dtype=torch.bool, device=self.device)
        self._exec_rows, self._audio_rows = list(range(self.max_streams)), []
        for slot in self._slots:
            slot.temperature = 0.0
        self._prepare_sampling([])
        self.lm_gen.set_exec_mask(everything)
        self.mimi.set_exec_mask(everything)
        with self._sampling_hooks():
            for _ in range(steps):
                frame = self.lm_gen.step(self._input_tokens)
                assert frame is not None
                self.mimi.decode(frame[:, 1:].clamp(min=0))
        self.lm_gen.reset_streaming(everything)
        self.mimi.reset_streaming(everything)
        self._exec_rows = []

    # ----- engine thread -----------------------------------------------------------------

    @torch.no_grad()
    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._running:
                        return
                    commands = [(slot, list(slot.inbox)) for slot in self._slots if slot.inbox]
                    for slot, _ in commands:
                        slot.inbox.clear()
                starting = [slot for slot, batch in commands if batch and batch[0][0] == "open"]
                if starting:
                    self._reset_rows(starting)  # one reset for every stream joining at this step
                for slot, batch in commands:
                    for kind, payload in batch:
                        self._handle(slot, kind, payload)
                runnable = [slot for slot in self._slots if self._runnable(slot)]
                if not runnable:
                    with self._lock:
                        if self._running and not any(slot.inbox for slot in self._slots):
                            self._wake.wait(timeout=0.05)
                    continue
                self._step(runnable)
        except Exception:  # the engine must not die silently: every stream learns of it
            logger.exception("engine thread crashed")
            self.crashed = True
            for slot in self._slots:
                if slot.sink is not None:
                    self._fail(slot, EngineError("engine failure"))
            if self.on_crash is not None:
                self.on_crash()
            raise

    def _handle(self, slot: _Slot, kind: str, payload: Any) -> None:
        if slot.sink is None:
            return
        try:
            if kind == "open":
                temperature, seed, conditioning = payload
                self._start(slot, temperature, seed, conditioning)
            elif kind == "voice":
                if slot.state is not None and (slot.state.entries or slot.state.transcript):
                    raise VoiceError("the voice can only change before the first text")
                self._apply_conditioning(slot.index, payload)
                slot.conditioning = payload
            elif kind == "text":
                self._push_text(slot, payload)
            elif kind == "eos":
                slot.complete = True
            elif kind == "close":
                self._free(slot)
        except EngineError as exc:
            self._fail(slot, exc)
        except Exception as exc:  # one stream's input must never end the thread every stream shares
            logger.exception("stream %d failed on its %s message", slot.stream_id, kind)
            self._fail(slot, EngineError(f"stream failed ({type(exc).__name__})"))

    def _reset_rows(self, slots: list[_Slot]) -> None:
        mask = torch.zeros(self.max_streams, dtype=torch.bool)
        for slot in slots:
            mask[slot.index] = True
        mask = mask.to(self.device)
        self.lm_gen.reset_streaming(mask)
        self.mimi.reset_streaming(mask)

    def _start(self, slot: _Slot, temperature: float, seed: int | None, conditioning: Conditioning) -> None:
        # The row's caches were reset by _reset_rows just before.
        self._apply_conditioning(slot.index, conditioning)
        slot.conditioning = conditioning
        slot.state = self.machine.new_state([])
        slot.offset = 0
        slot.complete = False
        slot.first_text = True
        slot.temperature = temperature
        slot.generator = torch.Generator(device="cpu").manual_seed(seed if seed is not None else secrets.randbits(63))
        slot.words_sent = 0
        slot.record_codes = callable(getattr(slot.sink, "codes", None))
        slot.stats = StreamStats()

    def _push_text(self, slot: _Slot, text: str) -> None:
        if slot.complete:
            raise RequestError("text after Eos")
        assert slot.state is not None
        try:
            entries = script_to_entries(
                self.tts.tokenizer,
                self.machine.token_ids,
                self.frame_rate,
                [text],
                # The speaker token goes before the first word only, as with the whole text at once.
                multi_speaker=self.tts.multi_speaker and slot.first_text,
                padding_between=self.padding_between,
            )
        except ValueError as exc:  # moshi's parser on malformed markup, e.g. <break time="1xs"/>
            # (its message quotes the text: not repeated here, this goes to logs)
            raise RequestError("the text could not be read (malformed <break> tag?)") from exc
        if any(entry.tokens for entry in entries):
            slot.first_text = False  # a leading <break> alone does not take the speaker token
        slot.state.entries.extend(entries)

    def _runnable(self, slot: _Slot) -> bool:
        """Can this slot step without the state machine needing a word that has not arrived?"""
        state = slot.state
        if slot.sink is None or state is None:
            return False
        if slot.complete or state.queued or state.forced_padding > 0:
            return True
        if not state.entries:
            return False
        if not state.entries[0].tokens or self.machine.second_stream_ahead == 0:
            return True
        # The machine reads the word `second_stream_ahead` entries after the one it pops.
        needed = self.machine.second_stream_ahead + 1
        return sum(1 for entry in state.entries if entry.tokens) >= needed

    @contextmanager
    def _sampling_hooks(self) -> Iterator[None]:
        self.lm.forward_depformer = self._forward_depformer  # type: ignore[method-assign,assignment]
        try:
            yield
        finally:
            del self.lm.forward_depformer

    @torch.no_grad()
    def _step(self, runnable: list[_Slot]) -> None:
        started = time.perf_counter()
        exec_mask = torch.zeros(self.max_streams, dtype=torch.bool)
        for slot in runnable:
            exec_mask[slot.index] = True
        self._exec_rows = [slot.index for slot in runnable]
        self._audio_rows = [slot.index for slot in runnable if slot.offset >= self.delay_steps]
        self.lm_gen.set_exec_mask(exec_mask.to(self.device))
        replace = None if self._audio_rows else self._no_depformer
        self._prepare_sampling(runnable)
        with self._sampling_hooks():
            frame = self.lm_gen.step(self._input_tokens, depformer_replace_tokens=replace)
        assert frame is not None

        decoding: list[_Slot] = []
        for slot in runnable:
            slot.offset += 1
            slot.stats.steps += 1
            time_index = slot.offset - 1 - self.max_delay  # the frame's position in the stream
            if time_index >= self.delay_steps:
                decoding.append(slot)
        pcm: np.ndarray | None = None
        if decoding:
            mimi_mask = torch.zeros(self.max_streams, dtype=torch.bool)
            for slot in decoding:
                mimi_mask[slot.index] = True
            self.mimi.set_exec_mask(mimi_mask.to(self.device))
            audio = self.mimi.decode(frame[:, 1:, :].clamp(min=0))
            pcm = torch.clip(audio[:, 0], -1, 1).float().cpu().numpy()

        elapsed = time.perf_counter() - started
        self.total_steps += 1
        self.step_times_s.append(elapsed)
        self.batch_sizes.append(len(runnable))
        if self.on_step is not None:
            self.on_step(elapsed, len(runnable))

        codes = frame[:, :, 0].cpu().numpy() if any(slot.record_codes for slot in runnable) else None
        for slot in runnable:
            if slot.sink is None:
                continue
            if codes is not None and slot.record_codes and slot.offset - 1 - self.max_delay >= 0:
                slot.sink.codes(codes[slot.index].copy())  # type: ignore[attr-defined]
            self._emit_words(slot)
            if pcm is not None and slot in decoding:
                slot.stats.audio_frames += 1
                slot.sink.audio(pcm[slot.index].copy())
            self._check_end(slot)

    def _emit_words(self, slot: _Slot, final: bool = False) -> None:
        assert slot.state is not None and slot.sink is not None
        transcript = slot.state.transcript
        # A word's stop is the next word's start (moshi-server's convention), known one word later.
        while slot.words_sent + 1 < len(transcript) or (final and slot.words_sent < len(transcript)):
            text, start = transcript[slot.words_sent]
            if slot.words_sent + 1 < len(transcript):
                stop = transcript[slot.words_sent + 1][1]
            else:
                stop = slot.state.end_step if slot.state.end_step is not None else slot.offset
            slot.sink.word(text, start / self.frame_rate, stop / self.frame_rate)
            slot.words_sent += 1
            slot.stats.words += 1

    def _check_end(self, slot: _Slot) -> None:
        state = slot.state
        assert state is not None
        if slot.complete and state.end_step is not None:
            self._emit_words(slot, final=True)
            if slot.offset >= state.end_step + self.delay_steps + self.tts.final_padding:
                sink = slot.sink
                self._free(slot)
                if sink is not None:
                    sink.finished()
                return
        if slot.offset >= self.max_steps:
            self._fail(slot, RequestError(f"the text is too long (over {self.max_steps} steps)"))

    def _fail(self, slot: _Slot, error: EngineError) -> None:
        sink = slot.sink
        self._free(slot)
        if sink is not None:
            sink.failed(error)

    def _free(self, slot: _Slot) -> None:
        with self._lock:
            slot.sink = None
            slot.inbox.clear()
        slot.state = None
        slot.conditioning = None

    # ----- hooks inside LMGen.step (engine thread) -------------------------------------------

    def _prepare_sampling(self, runnable: list[_Slot]) -> None:
        """Fills the sampling buffers for this step. The random numbers are drawn per slot in the
        order LMGen's sampling would draw them for that slot alone (text, then each audio
        codebook), so a seeded stream says the same whatever else the engine is saying."""
        temperatures = torch.ones(self.max_streams)
        text_sampling = torch.zeros(self.max_streams, dtype=torch.bool)
        audio_sampling = torch.zeros(self.max_streams, dtype=torch.bool)
        text = torch.ones(self._text_noise.shape)
        audio = torch.ones(self._audio_noise.shape) if self._audio_rows else None
        audio_rows = set(self._audio_rows)
        for slot in runnable:
            if slot.temperature > 0.0 and slot.generator is not None:
                temperatures[slot.index] = slot.temperature
                text_sampling[slot.index] = True
                text[slot.index].exponential_(1, generator=slot.generator)
                if audio is not None and slot.index in audio_rows:
                    audio_sampling[slot.index] = True
                    audio[slot.index].exponential_(1, generator=slot.generator)
        self._temperatures.copy_(temperatures)
        self._text_sampling.copy_(text_sampling)
        self._audio_sampling.copy_(audio_sampling)
        self._text_noise.copy_(text)
        if audio is not None:
            self._audio_noise.copy_(audio)

    def _sample(self, logits: torch.Tensor, sampling: torch.Tensor, top_k: int, noise: torch.Tensor) -> torch.Tensor:
        """One token per row: where `sampling`, drawn as LMGen would for that slot alone (same
        temperature, top-k, and random numbers from the slot's generator); greedy elsewhere.
        Fixed shapes and no Python branch on the data: this runs inside the depformer's graph."""
        flat = logits.reshape(logits.shape[0], logits.shape[-1]).float()
        greedy = flat.argmax(dim=-1)
        probs = torch.softmax(flat / self._temperatures[:, None], dim=-1)
        top_probs, top_index = torch.topk(probs, min(top_k, probs.shape[-1]), dim=-1)
        choice = (top_probs / noise).argmax(dim=-1, keepdim=True)
        return torch.where(sampling, top_index.gather(-1, choice)[:, 0], greedy)

    @staticmethod
    def _force(logits: torch.Tensor, tokens: torch.Tensor) -> None:
        """Rewrites logits in place so that LMGen's argmax picks `tokens`."""
        flat = logits.view(logits.shape[0], logits.shape[-1])
        flat.fill_(float("-inf"))
        flat.scatter_(1, tokens[:, None].to(flat.device), 0.0)

    def _on_text_logits(self, text_logits: torch.Tensor) -> None:
        if self.tts.padding_bonus:
            text_logits[..., self.machine.token_ids.pad] += self.tts.padding_bonus
        tokens = self._sample(text_logits, self._text_sampling, self.top_k_text, self._text_noise)
        self._force(text_logits, tokens)

    def _forward_depformer(self, cb_index: int, sequence: torch.Tensor, transformer_out: torch.Tensor) -> torch.Tensor:
        logits = self._original_forward_depformer(cb_index, sequence, transformer_out)
        tokens = self._sample(logits, self._audio_sampling, self.top_k, self._audio_noise[:, cb_index])
        logits = logits.clone()
        self._force(logits, tokens)
        return logits

    def _on_text(self, text_tokens: torch.Tensor) -> None:
        tokens = text_tokens.tolist()
        for row in self._exec_rows:
            slot = self._slots[row]
            if slot.state is not None:  # None during warmup
                tokens[row], _ = self.machine.process(slot.offset, slot.state, tokens[row])
        text_tokens[:] = torch.tensor(tokens, dtype=torch.long, device=text_tokens.device)

    def _on_audio(self, audio_tokens: torch.Tensor) -> None:
        # The audio of a stream starts `delay_steps` after its text; before that, codes are "zero".
        state = self.lm_gen._streaming_state
        assert state is not None
        delays = self.lm_gen.delays_cuda[self.lm.audio_offset : self.lm.audio_offset + audio_tokens.shape[1]]
        before = state.offsets[:, None] < delays[None, :] + self.delay_steps
        audio_tokens.masked_fill_(before, self.machine.token_ids.zero)


def voice_attributes(
    tts_model: TTSModel, speaker_wavs: torch.Tensor | None, cfg_alpha: float | None
) -> ConditionAttributes:
    """ConditionAttributes for one speaker, laid out as `TTSModel.make_condition_attributes` does
    for one voice file (speaker slot 0 of `max_speakers`), but from a tensor: voices may arrive as
    a protocol `Voice` message as well as from a file."""
    tensors: dict[str, TensorCondition] = {}
    if speaker_wavs is not None:
        if speaker_wavs.dim() != 3 or speaker_wavs.shape[0] != 1:
            raise VoiceError(f"a voice embedding is [1, C, T], got {list(speaker_wavs.shape)}")
        expected = _speaker_dim(tts_model)
        if expected is not None and speaker_wavs.shape[1] != expected:
            raise VoiceError(f"a voice embedding has {expected} channels, got {speaker_wavs.shape[1]}")
        _, channels, frames = speaker_wavs.shape
        speakers = tts_model.max_speakers
        voice = torch.zeros(1, speakers, frames, channels)
        mask = torch.zeros(1, speakers, frames, dtype=torch.bool)
        voice[:, 0] = speaker_wavs.float().transpose(1, 2)
        mask[:, 0] = True
        tensors["speaker_wavs"] = TensorCondition(voice.view(1, -1, channels), mask.view(1, -1))
    text: dict[str, str | None] = {"control": "ok"}
    if cfg_alpha is None:
        text["cfg"] = None
    else:
        if cfg_alpha not in tts_model.valid_cfg_conditionings:
            valid = ", ".join(str(value) for value in sorted(tts_model.valid_cfg_conditionings))
            raise VoiceError(f"cfg_alpha {cfg_alpha} is not supported; valid values: {valid}")
        text["cfg"] = format(cfg_alpha, ".1f")
    return ConditionAttributes(text=text, tensor=tensors)


def _speaker_dim(tts_model: TTSModel) -> int | None:
    provider = tts_model.lm.condition_provider
    if provider is None or "speaker_wavs" not in provider.conditioners:
        return None
    conditioner = provider.conditioners["speaker_wavs"]
    return int(getattr(conditioner, "dim"))  # noqa: B009


def load_voice_file(path: Path) -> torch.Tensor:
    """`speaker_wavs` [1, C, T] from a kyutai/tts-voices embedding file."""
    if path.suffix != ".safetensors":
        raise VoiceError("a voice embedding file is a .safetensors file")
    try:
        tensors = load_file(str(path), device="cpu")
    except (OSError, ValueError) as exc:
        raise VoiceError(f"unreadable voice file {path.name}") from exc
    if "speaker_wavs" not in tensors:
        raise VoiceError(f"{path.name} holds no speaker_wavs")
    return tensors["speaker_wavs"]
