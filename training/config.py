"""Training configuration: a dataclass, a TOML file and ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Every knob of a training run; defaults are the proposal's."""

    # model
    position_encoding: str = "log"
    hidden_dim: int = 64
    mlp_dim: int = 32
    learn_h0: bool = True
    output: str = "sigmoid"
    length_ref: str = "median"  # training-set action-length statistic for the position feature
    # sampling
    regime: str = "dense"  # "dense" (one pass per action, loss at every frame) or "prefix"
    min_segment_len: int = 3
    samples_per_video: int = 10
    frames_per_segment: int = 5
    stratified_sampling: bool = True
    # loss
    weighted_loss: bool = True
    weight_cap: float = 10.0
    # optimisation
    epochs: int = 20
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.15
    device: str = "auto"
    threads: int = 0  # 0: all cores

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _coerce(name: str, text: str) -> Any:
    field_type = {f.name: f.type for f in dataclasses.fields(TrainConfig)}.get(name)
    if field_type is None:
        raise ValueError(f"unknown config key {name!r}; known: {[f.name for f in dataclasses.fields(TrainConfig)]}")
    if field_type == "bool":
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} must be true or false, not {text!r}")
        return text.lower() in ("true", "1")
    if field_type in ("int", "float"):
        return float(text) if field_type == "float" else int(text)
    return text


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """Defaults, then the TOML file's values, then ``key=value`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values.update(tomllib.loads(Path(path).read_text()))
    for item in overrides or []:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r} is not key=value")
        name = key.strip().replace("-", "_")
        values[name] = _coerce(name, text.strip())
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown}")
    return TrainConfig(**values)
