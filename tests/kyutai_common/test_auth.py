"""No default engine key: a non-loopback engine without one refuses to start."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
from kyutai_common.settings import check_api_keys, is_loopback
from kyutai_stt.settings import EngineSettings as SttSettings
from kyutai_stt.settings import PluginSettings as SttPluginSettings
from kyutai_tts.settings import EngineSettings as TtsSettings


def test_there_is_no_default_key() -> None:
    assert SttSettings().api_keys == [] and TtsSettings().api_keys == []
    assert SttPluginSettings().api_key == ""


@pytest.mark.parametrize("host", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_loopback_without_a_key_runs_open_with_a_warning(host: str, caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback(host)
    with caplog.at_level(logging.WARNING):
        check_api_keys(SttSettings(host=host), logging.getLogger("test"))
    assert "no API key" in caplog.text


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.0.5", "::", "gpu-1.internal", ""])
def test_any_other_address_needs_a_key(host: str) -> None:
    with pytest.raises(SystemExit, match="without an API key"):
        check_api_keys(TtsSettings(host=host), logging.getLogger("test"))
    check_api_keys(TtsSettings(host=host, api_keys=["k"]), logging.getLogger("test"))


@pytest.mark.parametrize("module,prefix", [("kyutai_stt.server", "KYUTAI_STT_"), ("kyutai_tts.server", "KYUTAI_TTS_")])
def test_the_engine_command_exits_non_zero_before_loading(module: str, prefix: str) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith(prefix)}
    env[f"{prefix}HOST"] = "0.0.0.0"
    done = subprocess.run([sys.executable, "-m", module], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "refusing to listen on 0.0.0.0 without an API key" in done.stderr
