"""Options of the Kyutai STT plugin."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

# stt-1b-en_fr transcribes both; the gym's members speak French.
SttLanguage = Literal["fr", "en"]

FRAME_SECONDS = 0.08  # one model step: 1920 samples at 24 kHz


@dataclass(frozen=True)
class EndOfTurnOptions:
    """End of turn from the model's end-of-speech heads, as Kyutai's Unmute uses them.

    The server sends, every step, the probability of a pause for each head (class 0 of heads
    predicting pauses of 0.5 / 1 / 2 / 3 s). The chosen head is smoothed by an exponential moving
    average; when it crosses `threshold` while the member speaks, the turn has ended.
    """

    head: int = 2  # Unmute's choice: the 2 s pause head
    threshold: float = 0.6
    # Times for the average to move half way up (attack) / down (release); Unmute uses 10 ms.
    attack_s: float = 0.01
    release_s: float = 0.01
    ignore_first_steps: int = 12  # the heads are unreliable on a stream's first steps
    # The model's text delay (stt-1b-en_fr: 0.5 s): a flush sends this much silence, plus a frame.
    delay_s: float = 0.5
    # Checkpoints without heads: the turn ends after this much audio without a new word.
    no_heads_silence_s: float = 1.2
    # With a `voice_heard` probe (the agent's VAD): a head that fires while the member's voice is
    # still heard waits for it to stop, at most this long. A head that fires mid-word ends the turn
    # before the model has given that word, which then comes back as a second turn of its own.
    hold_while_voiced_s: float = 0.4

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold < 1.0:
            raise ValueError("threshold must be between 0 and 1")
        if self.head < 0 or self.ignore_first_steps < 0:
            raise ValueError("head and ignore_first_steps must not be negative")
        if self.attack_s <= 0 or self.release_s <= 0 or self.delay_s < 0 or self.no_heads_silence_s <= 0:
            raise ValueError("times must be positive")
        if self.hold_while_voiced_s < 0:
            raise ValueError("hold_while_voiced_s must not be negative")

    @property
    def flush_frames(self) -> int:
        """Silent frames that push the last words out of the model (Unmute: ceil(delay / 80 ms) + 1)."""
        return math.ceil(self.delay_s / FRAME_SECONDS) + 1


class PauseAverage:
    """An exponential moving average with separate rise (attack) and fall (release) half-lives."""

    def __init__(self, attack_s: float, release_s: float, initial: float = 0.0) -> None:
        self.attack_s = attack_s
        self.release_s = release_s
        self.value = initial

    def update(self, value: float, dt: float = FRAME_SECONDS) -> float:
        half_life = self.attack_s if value > self.value else self.release_s
        alpha = 1.0 - 2.0 ** (-dt / half_life)
        self.value = (1.0 - alpha) * self.value + alpha * value
        return self.value
