"""Torch-free runtime of the exported cell: load, check, pick providers, run one batched step."""

from __future__ import annotations

import ctypes
import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from progress_stream.contract.cell import (
    COVERAGE_KEY,
    INPUTS,
    OUTPUTS_BY_VERSION,
    REQUIRED_METADATA,
    SUPPORTED_FORMAT_VERSIONS,
)

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
#: TF32 matmuls (onnxruntime's CUDA default) put outputs ~2e-4 off the CPU's; full fp32 keeps 1e-5 parity.
CUDA_OPTIONS = {"use_tf32": "0"}


class ModelError(RuntimeError):
    """The model file is missing, unreadable, or not a progress cell of a known format."""


def cuda_usable() -> bool:
    """onnxruntime-gpu is installed and an NVIDIA driver is present."""
    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def choose_providers(requested: str | Sequence[str] = "auto") -> list[str]:
    """``auto``: CUDA then CPU where CUDA is usable, else CPU; or an explicit comma-separated list."""
    if isinstance(requested, str):
        if requested.strip() == "auto":
            requested = "cuda,cpu" if cuda_usable() else "cpu"
        requested = [p.strip() for p in requested.split(",") if p.strip()]
    names = [p if p.endswith("ExecutionProvider") else f"{p.upper()}ExecutionProvider" for p in requested]
    available = ort.get_available_providers()
    unknown = [p for p in names if p not in available]
    if unknown or not names:
        raise ModelError(f"providers {unknown or requested} not available; this onnxruntime has {available}")
    if CUDA in names and hasattr(ort, "preload_dlls"):
        ort.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels, where those are installed
    return names


class CellRuntime:
    """One exported ProgressHead cell on onnxruntime."""

    def __init__(self, path: str | Path, providers: str | Sequence[str] = "auto", threads: int = 0):
        self.path = Path(path)
        if not self.path.is_file():
            raise ModelError(f"{self.path}: no such model file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            chosen = choose_providers(providers)
            options = [CUDA_OPTIONS if p == CUDA else {} for p in chosen]
            self.session = ort.InferenceSession(str(self.path), opts, providers=chosen, provider_options=options)
        except ModelError:
            raise
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            raise ModelError(f"{self.path}: not a loadable ONNX model: {exc}") from exc
        self.metadata = self._check_metadata()
        self.embedding_dim = int(self.metadata["embedding_dim"])
        self.hidden_dim = int(self.metadata["hidden_dim"])
        self.outputs = OUTPUTS_BY_VERSION[self.metadata["format_version"]]
        #: the band's nominal coverage; None for a version 1 cell, which answers without a band
        self.coverage = float(self.metadata[COVERAGE_KEY]) if "band" in self.outputs else None
        self._check_signature()
        self.providers = self.session.get_providers()
        log.info("loaded %s on %s", self.path, self.providers)

    def _check_metadata(self) -> dict[str, str]:
        meta = dict(self.session.get_modelmeta().custom_metadata_map)
        missing = [k for k in REQUIRED_METADATA if k not in meta]
        if missing:
            raise ModelError(f"{self.path}: not a progress cell: metadata lacks {missing}")
        if meta["format_version"] not in SUPPORTED_FORMAT_VERSIONS:
            raise ModelError(
                f"{self.path}: unknown format version {meta['format_version']!r}; "
                f"this runtime reads {sorted(SUPPORTED_FORMAT_VERSIONS)}"
            )
        if "band" in OUTPUTS_BY_VERSION[meta["format_version"]]:
            try:
                coverage = float(meta.get(COVERAGE_KEY, ""))
            except ValueError:
                coverage = float("nan")
            if not 0 < coverage < 1:
                raise ModelError(f"{self.path}: a cell with a band needs {COVERAGE_KEY!r} in (0, 1) in its metadata")
        return meta

    def _check_signature(self) -> None:
        sizes = {"D": self.embedding_dim, "H": self.hidden_dim}
        for kind, expected, actual in (
            ("input", INPUTS, self.session.get_inputs()),
            ("output", self.outputs, self.session.get_outputs()),
        ):
            found = {a.name: a for a in actual}
            if set(found) != set(expected):
                raise ModelError(f"{self.path}: {kind}s are {sorted(found)}, expected {sorted(expected)}")
            for name, (dtype, shape) in expected.items():
                arg = found[name]
                want = [sizes.get(s, s) for s in shape]
                fixed_ok = all(isinstance(w, str) or g == w for g, w in zip(arg.shape, want, strict=False))
                if arg.type != dtype or len(arg.shape) != len(want) or not fixed_ok:
                    raise ModelError(f"{self.path}: {kind} {name!r} is {arg.type}{arg.shape}, expected {dtype}{want}")

    @property
    def checkpoint(self) -> str:
        """The sha256 of the checkpoint the cell was exported from: the model's identity for state files and
        the shared store (empty for a cell exported without one)."""
        return self.metadata.get("checkpoint_sha256", "")

    def describe(self) -> dict:
        """What clients see at ``GET /v1/model``: the metadata, with the JSON entries parsed and the band's
        coverage a number (None for a version 1 cell, whatever its metadata says)."""
        meta = dict(self.metadata)
        for key in ("position_params", "model_config", "training_data", "metrics"):
            if key in meta:
                meta[key] = json.loads(meta[key])
        return {"path": str(self.path), "providers": self.providers, **meta, COVERAGE_KEY: self.coverage}

    def step(
        self, embedding: np.ndarray, step: np.ndarray, state: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """One frame per row: ``embedding`` f32 (B, D), ``step`` i64 (B,), ``state`` f32 (B, H) → progress
        (B,), the next state (B, H) and the band (B, 2), None for a version 1 cell."""
        outputs = self.session.run(None, {"embedding": embedding, "step": step, "state": state})
        return outputs[0], outputs[1], outputs[2] if len(outputs) > 2 else None

    def run_action(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Progress (L,) and band (L, 2) (None for a version 1 cell) at every frame of one whole action,
        stepping the cell from its initial state."""
        state = np.zeros((1, self.hidden_dim), np.float32)
        progress = np.empty(len(embeddings), np.float32)
        band = np.empty((len(embeddings), 2), np.float32) if self.coverage is not None else None
        for i in range(len(embeddings)):
            p, state, b = self.step(embeddings[i : i + 1], np.array([i], np.int64), state)
            progress[i] = p[0]
            if band is not None:
                band[i] = b[0]
        return progress, band
