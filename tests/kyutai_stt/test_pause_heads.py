"""The end-of-speech head probabilities that end a member's turn are moshi's own.

The plugin ends a turn on the engine's per-step pause probabilities (`SlotOutput.prs`, sent as
`Step.prs`). The reference here is moshi's public API alone, as Kyutai's Unmute reads them:
Mimi encodes one 80 ms frame, `LMGen.step_with_extra_heads` steps once for one stream and
returns each head's softmax; the pause probability of a head is its class 0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from kyutai_stt.engine import SttEngine, load_checkpoint
from moshi.models import LMGen

from .conftest import speech
from .test_equivalence import FRAME, frames_of, reference_models

# float32 on CPU on both sides; batched matmuls may sum in another order than batch 1
TOLERANCE = 1e-5


def talk_then_pause(seconds: float, seed: int) -> np.ndarray:
    """A member speaks, then stays silent for 2 s: the pause heads have something to predict."""
    audio = np.concatenate([speech(seconds, seed), np.zeros(24000 * 2, np.float32)])
    return audio[: len(audio) // FRAME * FRAME]


@torch.no_grad()
def reference_pause_probabilities(
    directory: Path, audio: np.ndarray | None = None, codes: list[torch.Tensor] | None = None
) -> dict[int, list[float]]:
    """moshi alone, one stream: {step (1-based): [class-0 probability per head]}.

    From the audio through moshi's Mimi, or (LM only) from given audio codes. A plain LMGen
    gives nothing during its own delay, so those steps have no reference.
    """
    mimi, lm = reference_models(directory)
    assert len(lm.extra_heads) > 0, "the tiny checkpoint must carry the end-of-speech heads"
    gen = LMGen(lm, temp=0.0, temp_text=0.0)
    by_step: dict[int, list[float]] = {}
    with mimi.streaming(1), gen.streaming(1):
        inputs = codes if codes is not None else [None] * (len(audio) // FRAME)  # type: ignore[arg-type]
        for index, given in enumerate(inputs):
            if given is None:
                assert audio is not None
                frame_codes = mimi.encode(torch.from_numpy(audio[index * FRAME : (index + 1) * FRAME])[None, None])
            else:
                frame_codes = given[None, :, None]
            result = gen.step_with_extra_heads(frame_codes)
            if result is not None:
                _, heads = result
                by_step[index + 1] = [float(head[0, 0, 0]) for head in heads]
    return by_step


def assert_same_probabilities(got: dict[int, list[float]], expected: dict[int, list[float]]) -> None:
    assert expected, "the reference produced no step after its delay"
    for step, reference in expected.items():
        np.testing.assert_allclose(got[step], reference, atol=TOLERANCE, rtol=0, err_msg=f"step {step}")


def test_one_stream_gives_moshis_pause_probabilities(tiny_stt_dir: Path) -> None:
    audio = talk_then_pause(1.5, seed=41)
    expected = reference_pause_probabilities(tiny_stt_dir, audio=audio)
    engine = SttEngine(load_checkpoint(str(tiny_stt_dir), "cpu"), max_streams=4)
    engine.warmup(1)
    slot = engine.open_slot()
    assert slot is not None
    got: dict[int, list[float]] = {}
    for frame in frames_of(audio):
        output = engine.step({slot: frame})[0][slot]
        got[output.step] = output.prs

    heads = len(next(iter(expected.values())))
    assert all(len(prs) == heads for prs in got.values()), "every step carries every head"
    assert_same_probabilities(got, expected)
    # The comparison means something only if the probabilities move with the audio.
    pause = [prs[0] for prs in expected.values()]
    assert max(pause) - min(pause) > 0.01, "the tiny heads give a constant probability"


def test_a_stream_in_a_busy_batch_gives_moshis_pause_probabilities(tiny_stt_dir: Path) -> None:
    """Neighbours join, stall and leave around the stream; its heads see only its own audio.

    Batched Mimi is not batch-invariant on CPU (KYUTAI_FACTS), so the LM reference is fed the
    codes the engine encoded; the LM and its heads are batch-invariant.
    """
    engine = SttEngine(load_checkpoint(str(tiny_stt_dir), "cpu"), max_streams=4)
    engine.warmup(1)
    member = frames_of(talk_then_pause(1.2, seed=42))
    neighbours = [frames_of(talk_then_pause(0.8, seed=43)), frames_of(talk_then_pause(1.5, seed=44))]
    slot = engine.open_slot()
    assert slot is not None
    neighbour_slots: list[int | None] = [None, None]
    got: dict[int, list[float]] = {}
    codes: list[torch.Tensor] = []
    step = 0
    while member:
        if step == 3:
            neighbour_slots[0] = engine.open_slot()
        if step == 6:
            neighbour_slots[1] = engine.open_slot()
        batch: dict[int, np.ndarray] = {}
        if step % 4 != 3:  # every fourth step the member's frame arrives late: others step without it
            batch[slot] = member.pop(0)
        for index, frames in zip(neighbour_slots, neighbours, strict=True):
            if index is not None and frames:
                batch[index] = frames.pop(0)
            elif index is not None and not frames:
                engine.close_slot(index)
                neighbour_slots[neighbour_slots.index(index)] = None
        outputs, _ = engine.step(batch)
        if slot in batch:
            got[outputs[slot].step] = outputs[slot].prs
            codes.append(outputs[slot].codes)
        step += 1

    assert_same_probabilities(got, reference_pause_probabilities(tiny_stt_dir, codes=codes))
