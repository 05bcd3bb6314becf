"""The settings both engines share: one vocabulary (`max_streams`), one device check."""

from __future__ import annotations

import pytest
from kyutai_stt.settings import EngineSettings as SttSettings
from kyutai_tts.settings import EngineSettings as TtsSettings
from pydantic import ValidationError


def test_both_engines_size_their_batch_with_max_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYUTAI_STT_MAX_STREAMS", "7")
    monkeypatch.setenv("KYUTAI_TTS_MAX_STREAMS", "5")
    assert SttSettings().max_streams == 7
    assert TtsSettings().max_streams == 5
    assert TtsSettings(max_streams=3).max_streams == 3


def test_the_tts_engine_still_reads_its_former_capacity_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KYUTAI_TTS_CAPACITY", "6")
    assert TtsSettings().max_streams == 6


@pytest.mark.parametrize("settings", [SttSettings, TtsSettings])
def test_a_device_is_auto_cpu_or_cuda(settings: type[SttSettings] | type[TtsSettings]) -> None:
    assert settings(device="cuda:1").device == "cuda:1"
    with pytest.raises(ValidationError, match="auto, cpu or cuda"):
        settings(device="tpu")
