"""Training configuration: the one definition of the default recipe, TOML variants and overrides.

``TrainConfig()`` *is* the default that ``progress train`` builds with no ``--config`` and that the
docs document (Training); files in ``configs/`` hold only what a variant changes. Every value is checked
against its field's type and allowed values, wherever it comes from (TOML, ``--set``, the search).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Allowed values of the string fields.
CHOICES: dict[str, tuple[str, ...]] = {
    "position_encoding": ("log", "linear", "relative", "none"),
    "length_ref": ("median", "mean", "p90"),
    "output": ("sigmoid", "clamp"),
    "input_norm": ("standardize", "none"),
    "regime": ("dense", "prefix"),
    "loss": ("l1", "l2"),
    "device": ("auto", "cpu", "cuda"),
}

#: Inclusive lower bounds (and, where given, exclusive upper bounds) of the numeric fields.
BOUNDS: dict[str, tuple[float, float | None]] = {
    "hidden_dim": (1, None),
    "layers": (1, None),
    "mlp_dim": (1, None),
    "input_rank": (0, None),
    "members": (1, None),
    "dropout": (0.0, 1.0),
    "min_segment_len": (1, None),
    "samples_per_video": (1, None),
    "frames_per_segment": (1, None),
    "time_warp": (0.0, None),
    "weight_cap": (1.0, None),
    "aux_weight": (0.0, None),
    "label_weight": (0.0, None),
    "edge_weight": (0.0, None),
    "epochs": (1, None),
    "batch_size": (1, None),
    "lr": (1e-9, None),
    "weight_decay": (0.0, None),
    "lr_floor": (0.0, 1.0),
    "average_top": (1, None),
    "grad_clip": (0.0, None),
    "val_fraction": (1e-9, 1.0),
    "threads": (0, None),
    "coverage": (0.5, 1.0),
    "band_weight": (0.0, None),
    "feature_offset": (0.0, None),
    "distill_weight": (0.0, 1.0),
    "teacher_members": (0, None),
    "teacher_decay": (0.0, 1.0),
}

#: The fields that shape the network; the model is built from these and the checkpoint stores them.
MODEL_FIELDS = (
    "position_encoding",
    "hidden_dim",
    "layers",
    "mlp_dim",
    "members",
    "learn_h0",
    "output",
    "input_norm",
    "dropout",
    "input_rank",
)


class ConfigError(ValueError):
    """A config key or value that is not allowed; the message names the key."""


@dataclass(frozen=True)
class TrainConfig:
    """Every knob of a training run. The defaults are the documented default recipe (docs: Training)."""

    # model
    position_encoding: str = "log"  # log1p(i+1)/log1p(L_ref): a feature of the frame index alone
    length_ref: str = "median"  # training-set action-length statistic that is L_ref
    hidden_dim: int = 128
    layers: int = 1
    mlp_dim: int = 128  # the readout's width: 32 read sub-step and cycle structure less well
    members: int = 1  # >1: a seed ensemble in one cell (states concatenated, outputs averaged); configs/ensemble.toml
    learn_h0: bool = True
    output: str = "sigmoid"
    input_norm: str = "standardize"  # per-dimension z-score from the training frames, inside the graph
    dropout: float = 0.0
    input_rank: int = 96  # the GRU reads this many learned projections of the embedding; 0: all of it
    # sampling
    regime: str = "dense"  # "dense" (one pass per action, loss at every frame) or "prefix"
    min_segment_len: int = 1
    samples_per_video: int = 10
    frames_per_segment: int = 5
    stratified_sampling: bool = True
    time_warp: float = 0.7  # actions replayed at speed exp(U(-w, w)) each epoch; 0: off
    feature_offset: float = 0.5  # each training action shifted by one random vector, N(0, s²) per standardised dim
    # loss
    loss: str = "l1"  # l1: conditional median; l2: conditional mean
    weighted_loss: bool = False  # the proposal's early weighting min(cap, 1/max(gt, 1/cap))
    weight_cap: float = 10.0
    edge_weight: float = 0.25  # extra weight on each action's first and last 10 % of frames (dense regime)
    aux_weight: float = 0.0  # auxiliary target: log1p(L)/log1p(L_ref) of the action
    label_weight: float = 0.03  # auxiliary target: each action's label, read from the GRU state (training only)
    # distillation: a teacher (its own members, its own initialisation) trained side by side; the head learns
    # from its progress too
    teacher_members: int = 1  # 0: no teacher
    teacher_decay: float = 0.0  # > 0: the teacher is the moving average of the head's weights (this decay per step)
    distill_weight: float = 0.25  # the share of the head's progress loss taken against the teacher's progress
    # the band
    coverage: float = 0.8  # nominal share of frames whose true progress lies inside the band
    band_weight: float = 1.0  # weight of the band's two quantile (pinball) losses
    # optimisation
    epochs: int = 70
    batch_size: int = 64
    lr: float = 5e-3
    lr_floor: float = 0.3  # the cosine schedule ends at lr × lr_floor, not 0: the converged end reads worse
    weight_decay: float = 0.25  # AdamW's, on the weight matrices only (not the biases or the initial state)
    average_top: int = 5  # serve the mean of the weights of the epochs that read validation best, if it reads better
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.15
    device: str = "auto"
    threads: int = 0  # 0: all cores

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            check_value(f.name, getattr(self, f.name))
        if self.teacher_members > 0 and self.teacher_decay > 0:
            raise ConfigError(
                f"config keys 'teacher_members' ({self.teacher_members}) and 'teacher_decay' ({self.teacher_decay}) "
                "each choose a teacher: set one of them to 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def model_kwargs(self) -> dict[str, Any]:
        """The network-shaping fields, as :class:`training.model.ProgressHead` takes them."""
        return {name: getattr(self, name) for name in MODEL_FIELDS}

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


_TYPES: dict[str, type] = typing.get_type_hints(TrainConfig)


def check_value(name: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` has ``name``'s type and lies in its allowed range."""
    if name not in _TYPES:
        raise ConfigError(f"unknown config key {name!r}; known: {', '.join(_TYPES)}")
    want = _TYPES[name]
    ok = isinstance(value, want) and not (want is not bool and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
        ok = True
    if not ok:
        raise ConfigError(f"config key {name!r} must be {want.__name__}, not {type(value).__name__} {value!r}")
    if name in CHOICES and value not in CHOICES[name]:
        raise ConfigError(f"config key {name!r} must be one of {', '.join(CHOICES[name])}, not {value!r}")
    if name in BOUNDS:
        lo, hi = BOUNDS[name]
        if value < lo or (hi is not None and value >= hi):
            span = f">= {lo}" if hi is None else f"in [{lo}, {hi})"
            raise ConfigError(f"config key {name!r} must be {span}, not {value!r}")


def _parse_override(item: str) -> tuple[str, Any]:
    """``key=value`` with the value read as TOML (``5``, ``true``, ``0.1``), else as a bare string."""
    key, sep, text = item.partition("=")
    if not sep:
        raise ConfigError(f"override {item!r} is not key=value")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()
    return key.strip().replace("-", "_"), value


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> TrainConfig:
    """The defaults, then a TOML variant's values, then ``key=value`` overrides; every value type-checked."""
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(Path(path).read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    values.update(_parse_override(item) for item in overrides or [])
    for name, value in values.items():
        check_value(name, value)
    return TrainConfig(**values)
