"""The checkpoint schema: the one module that writes and reads ``best.pt``.

A checkpoint is a dict with ``schema`` (:data:`SCHEMA_VERSION`), ``model_config`` (the
:class:`ProgressHead` arguments), ``state_dict``, ``train_config`` (the full :class:`TrainConfig`),
``data`` (training-set statistics) and ``metrics`` (validation at the kept epoch). Export, evaluation,
reports and benchmarks read it through :func:`load_checkpoint`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from progress_stream.training.config import TrainConfig
from progress_stream.training.model import ProgressHead

SCHEMA_VERSION = 3
KEYS = ("schema", "model_config", "state_dict", "train_config", "data", "metrics")
#: What a checkpoint written before a field existed was trained with (model and train config alike).
EARLIER = {"input_rank": 0}  # the GRU read the whole embedding
#: ... and what only its training config lacks.
EARLIER_TRAINING = {**EARLIER, "average_top": 1, "label_weight": 0.0}  # the best epoch alone, no label target


class CheckpointError(ValueError):
    """A file that is not a checkpoint of this schema; the message names the file."""


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint holds besides the weights."""

    path: Path
    model_config: dict[str, Any]
    train_config: TrainConfig
    data: dict[str, Any]
    metrics: dict[str, Any]


def save_checkpoint(
    path: Path, model: ProgressHead, cfg: TrainConfig, data: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Write atomically (a temporary file renamed over ``path``): a reader never sees half a checkpoint."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {
            "schema": SCHEMA_VERSION,
            "model_config": dict(model.config),
            "state_dict": model.state_dict(),
            "train_config": cfg.to_dict(),
            "data": data,
            "metrics": metrics,
        },
        tmp,
    )
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str = "cpu") -> tuple[ProgressHead, Checkpoint]:
    """Rebuild the head (eval mode) from ``path``; a file of another schema is a :class:`CheckpointError`."""
    path = Path(path)
    try:
        raw = torch.load(path, map_location=map_location, weights_only=False)
    except FileNotFoundError:
        raise
    except Exception as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("schema") != SCHEMA_VERSION:
        found = raw.get("schema", "none") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path}: checkpoint schema {found}, this version reads schema {SCHEMA_VERSION}")
    missing = [k for k in KEYS if k not in raw]
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    model_config = {**EARLIER, **raw["model_config"]}
    try:
        model = ProgressHead(**model_config)
        # written before the progress offset existed: no correction, as it was trained
        state = {"progress_offset": model.progress_offset, **raw["state_dict"]}
        if state.get("band_offset", model.band_offset).ndim == 1:  # one offset for both sides, as calibrated
            state["band_offset"] = state["band_offset"].unsqueeze(1).expand(-1, 2)
        model.load_state_dict(state)
        cfg = TrainConfig(**{**EARLIER_TRAINING, **raw["train_config"]})
    except (TypeError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match its model_config: {exc}") from exc
    model.eval()
    meta = Checkpoint(path, model_config, cfg, raw["data"], raw["metrics"])
    return model, meta
