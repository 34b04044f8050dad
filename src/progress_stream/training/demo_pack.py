"""The web page's demo pack: a few held-out actions (test split) with their truth, as ``.npy`` files.

``index.json`` lists them; each ``aN.npy`` is one action's ``(T, D)`` float32 embeddings, the format a
user can also drop on the page. Only test-split videos are used, so the demo shows the model on
actions it never trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from progress_stream.training.data import ground_truth, load_annotations, load_dataset, split_handles


def write_demo_pack(annotations: Path, features: Path, out: Path, count: int = 6, split: Path | None = None) -> Path:
    """Write ``count`` held-out actions under ``out``: the longest action of each test video, longest first
    (long actions show the progress curve best)."""
    videos = load_annotations(annotations)
    test = split_handles(videos, split)["test"]
    data = load_dataset(videos, features, test, min_length=8)
    out.mkdir(parents=True, exist_ok=True)
    longest: dict[str, tuple] = {}
    for action, x in zip(data.actions, data.features, strict=True):
        if action.handle not in longest or len(x) > len(longest[action.handle][1]):
            longest[action.handle] = (action, x)
    entries = []
    for action, x in sorted(longest.values(), key=lambda ax: -len(ax[1]))[:count]:
        name = f"a{len(entries)}.npy"
        np.save(out / name, np.ascontiguousarray(x, np.float32))
        truth = [round(float(v), 6) for v in ground_truth(len(x))]
        label = f"{action.handle} · action {action.label}"
        entries.append({"name": label, "file": name, "frames": len(x), "truth": truth})
    index = out / "index.json"
    index.write_text(json.dumps({"embedding_dim": data.dim, "actions": entries}))
    return index
