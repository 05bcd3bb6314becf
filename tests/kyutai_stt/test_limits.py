"""Checkpoints moshi's loader runs are served; limits that need no running process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from kyutai_stt.engine import SttEngine, load_checkpoint


def test_a_config_with_an_empty_conditioners_block_is_served(tiny_stt_dir: Path, tmp_path: Path) -> None:
    """moshi's loader builds an empty condition provider for `"conditioners": {}`: nothing is conditioned."""
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny_stt_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["conditioners"] = {}
    (copy / "config.json").write_text(json.dumps(config))
    checkpoint = load_checkpoint(str(copy), "cpu")
    assert checkpoint.lm.condition_provider is not None and not checkpoint.lm.condition_provider.conditioners
    engine = SttEngine(checkpoint, max_streams=1)
    slot = engine.open_slot()
    assert slot is not None
    outputs, _ = engine.step({slot: np.zeros(engine.frame_size, dtype=np.float32)})
    assert outputs[slot].step == 1
