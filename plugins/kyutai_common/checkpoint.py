"""Where a Kyutai checkpoint lives and what it runs on, for both engine servers (torch, moshi)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from moshi.models import loaders


class CheckpointError(RuntimeError):
    """The checkpoint cannot be found or does not describe the model the engine serves."""


def resolve_device(device: str) -> torch.device:
    """The torch device of a `device` setting; auto: cuda when present, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """The torch dtype of a `dtype` setting; auto: bf16 on GPU (the weights' own type), fp32 on CPU
    (bf16 matmuls are slow there)."""
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}[dtype]


def checkpoint_info(source: str) -> loaders.CheckpointInfo:
    """CheckpointInfo for a local directory (config.json naming the files) or a Hugging Face repo id.

    A local directory is read without the hub: every file its config names must be there, and a
    Mimi config file is passed explicitly (else moshi's loader fetches one from the hub).
    """
    directory = Path(source).expanduser()
    if directory.is_dir():
        config_path = directory / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"{directory} has no config.json")
        config = json.loads(config_path.read_text())
        names = {key: config.get(key) for key in ("moshi_name", "mimi_name", "tokenizer_name")}
        missing = [key for key, name in names.items() if not name or not (directory / name).is_file()]
        mimi_config_name = config.get("mimi_config_name")
        if mimi_config_name and not (directory / mimi_config_name).is_file():
            missing.append("mimi_config_name")
        if missing:
            raise CheckpointError(f"{config_path}: missing or absent files for {', '.join(missing)}")
        return loaders.CheckpointInfo.from_hf_repo(
            str(directory),
            moshi_weights=directory / names["moshi_name"],
            mimi_weights=directory / names["mimi_name"],
            tokenizer=directory / names["tokenizer_name"],
            config_path=config_path,
            mimi_config_path=directory / mimi_config_name if mimi_config_name else None,
        )
    if source.count("/") != 1:
        raise CheckpointError(f"{source!r} is neither a local checkpoint directory nor a repo id")
    return loaders.CheckpointInfo.from_hf_repo(source)
