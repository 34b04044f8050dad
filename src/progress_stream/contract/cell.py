"""The exported cell's contract, shared by the exporter (writes it) and the runtime (checks it)."""

from __future__ import annotations

#: Bumped when the graph's signature or the meaning of its metadata changes.
FORMAT_VERSION = "1"
SUPPORTED_FORMAT_VERSIONS = frozenset({FORMAT_VERSION})

#: name → (ONNX Runtime type string, shape with "batch", "D" and "H" as symbols)
INPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "embedding": ("tensor(float)", ("batch", "D")),
    "step": ("tensor(int64)", ("batch",)),
    "state": ("tensor(float)", ("batch", "H")),
}
OUTPUTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "progress": ("tensor(float)", ("batch",)),
    "next_state": ("tensor(float)", ("batch", "H")),
}
REQUIRED_METADATA = ("format_version", "embedding_dim", "hidden_dim", "position_encoding")
