"""``progress sweep``: training recipes × feature families, scored on validation videos only.

This is how the default recipe was chosen: by its worst case across structurally different
families, never by the test split (each run validates on videos held out of the training handles).
Every recipe is written out in full from :data:`BASE`, so the table keeps its meaning when the
defaults change; ``default`` is whatever :class:`TrainConfig` holds now.
"""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

from tqdm import tqdm

from progress_stream.training.config import TrainConfig

#: A plain GRU head: the starting point every recipe below changes.
BASE: dict[str, Any] = {
    "hidden_dim": 64,
    "layers": 1,
    "mlp_dim": 32,
    "lr": 3e-3,
    "members": 1,
    "output": "sigmoid",
    "input_norm": "none",
    "dropout": 0.0,
    "input_rank": 0,
    "time_warp": 0.0,
    "weighted_loss": False,
    "aux_weight": 0.0,
    "label_weight": 0.0,
    "loss": "l1",
    "edge_weight": 0.0,
    "feature_offset": 0.0,
    "band_weight": 0.0,
    "teacher_members": 0,
    "teacher_decay": 0.0,
    "weight_decay": 0.0,
    "lr_floor": 0.0,
    "epochs": 40,
    "average_top": 1,
}

#: The recipe the sweep chose before the band and the offset augmentation: three members, hidden 128.
_ENSEMBLE = {"input_norm": "standardize", "time_warp": 0.3, "members": 3, "hidden_dim": 128, "edge_weight": 0.5}
#: One member with the band and the per-action feature offset (the default's shape).
_SINGLE = {**_ENSEMBLE, "members": 1, "band_weight": 1.0, "feature_offset": 0.5}
#: ... taught by three members beside it (half its progress loss against them), with weight decay (the default
#: before the wider readout).
_TAUGHT = {**_SINGLE, "teacher_members": 3, "distill_weight": 0.5, "weight_decay": 0.25}
#: ... a readout of 128, learning rate 0.005, a teacher of two, 50 epochs.
_WIDE = {**_TAUGHT, "mlp_dim": 128, "lr": 5e-3, "teacher_members": 2, "epochs": 50}
#: ... a teacher of one, 75 epochs.
_LONG = {**_WIDE, "teacher_members": 1, "epochs": 75}
#: ... with the learning rate's cosine ending at these fractions of it.
_FLOORS = (0.2, 0.3, 0.5)
#: ... floor 0.3, with these edge weights (every epoch judged with the start and end offsets it would get).
_FLOORED = {**_LONG, "lr_floor": 0.3}
_EDGES = (0.0, 0.25)
#: ... edge 0.25, with these time warps (batched by the replayed length).
_EDGED = {**_FLOORED, "edge_weight": 0.25}
_WARPS = (0.5, 0.7, 0.85, 1.0)
#: ... warp 0.7, 70 epochs, with the GRU reading these many projections of the embedding.
_SEVENTY = {**_EDGED, "time_warp": 0.7, "epochs": 70}
_RANKS = (32, 64, 96)
#: ... 96 projections, with these shares of the head's progress loss against the teacher.
_RANKED = {**_SEVENTY, "input_rank": 96}
_RANKED_NAME = "norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor0.3+edge0.25+warp0.7+70ep+rank96"
_SHARES = (0.125, 0.25, 0.75)
#: ... a quarter against the teacher, serving the mean of the weights of these many best epochs.
_QUARTER = {**_RANKED, "distill_weight": 0.25}
_AVERAGED = (3, 5, 10)
#: ... the five best, with a mean teacher (the head's moving average) decayed by these per step.
_TOP5 = {**_QUARTER, "average_top": 5}
_MEAN_DECAYS = (0.99, 0.995)
#: ... the five best, with the action's label as an auxiliary target at these weights.
_LABELS = (0.03, 0.1)

RECIPES: dict[str, dict[str, Any]] = {
    "plain": {},
    "first-release": {"hidden_dim": 128, "output": "clamp", "weighted_loss": True},
    "weighted": {"weighted_loss": True},
    "clamp": {"output": "clamp"},
    "norm": {"input_norm": "standardize"},
    "norm+warp": {"input_norm": "standardize", "time_warp": 0.3},
    "norm+warp0.6": {"input_norm": "standardize", "time_warp": 0.6},
    "norm+warp+h128": {"input_norm": "standardize", "time_warp": 0.3, "hidden_dim": 128},
    "norm+warp+2layers": {"input_norm": "standardize", "time_warp": 0.3, "layers": 2, "dropout": 0.1},
    "norm+warp+dropout": {"input_norm": "standardize", "time_warp": 0.3, "dropout": 0.2},
    "norm+warp+aux": {"input_norm": "standardize", "time_warp": 0.3, "aux_weight": 0.5},
    "norm+warp+ens3": {"input_norm": "standardize", "time_warp": 0.3, "members": 3},
    "norm+warp+ens3+l2": {"input_norm": "standardize", "time_warp": 0.3, "members": 3, "loss": "l2"},
    "norm+warp+ens3+20ep": {"input_norm": "standardize", "time_warp": 0.3, "members": 3, "epochs": 20},
    "norm+warp+ens3+weighted": {"input_norm": "standardize", "time_warp": 0.3, "members": 3, "weighted_loss": True},
    "norm+warp+ens3+weighted3": {
        "input_norm": "standardize",
        "time_warp": 0.3,
        "members": 3,
        "weighted_loss": True,
        "weight_cap": 3.0,
    },
    "norm+warp+ens3+h128": {"input_norm": "standardize", "time_warp": 0.3, "members": 3, "hidden_dim": 128},
    "norm+warp+ens3+2layers": {"input_norm": "standardize", "time_warp": 0.3, "members": 3, "layers": 2},
    "norm+warp+ens3+h128+edge": _ENSEMBLE,
    "norm+warp+h128+edge": {"input_norm": "standardize", "time_warp": 0.3, "hidden_dim": 128, "edge_weight": 0.5},
    "norm+warp+ens3+h128+edge1": {
        "input_norm": "standardize",
        "time_warp": 0.3,
        "members": 3,
        "hidden_dim": 128,
        "edge_weight": 1.0,
    },
    "norm+warp+h128+edge+band": {**_SINGLE, "feature_offset": 0.0},
    "norm+warp+h128+edge+band+offset": _SINGLE,
    "norm+warp+h128+edge+band+offset1": {**_SINGLE, "feature_offset": 1.0},
    "norm+warp+ens3+h128+edge+band+offset": {**_SINGLE, "members": 3},
    "norm+warp+h128+edge+band+offset+distil": {**_SINGLE, "teacher_members": 3, "distill_weight": 0.5},
    "norm+warp+h128+edge+band+offset+distil+wd": _TAUGHT,
    "norm+warp+h128+edge+band+offset+distil+wd+mlp128": {**_TAUGHT, "mlp_dim": 128},
    "norm+warp+h128+edge+band+offset+distil+wd+mlp128+lr5": {**_TAUGHT, "mlp_dim": 128, "lr": 5e-3},
    "norm+warp+h128+edge+band+offset+distil2+wd+mlp128+lr5": {**_WIDE, "epochs": 40},
    "norm+warp+h128+edge+band+offset+distil2+wd+mlp128+lr5+50ep": _WIDE,
    "norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep": _LONG,
    **{
        f"norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor{x}": {**_LONG, "lr_floor": x}
        for x in _FLOORS
    },
    **{
        f"norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor0.3+edge{x}": {**_FLOORED, "edge_weight": x}
        for x in _EDGES
    },
    **{
        f"norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor0.3+edge0.25+warp{x}": {
            **_EDGED,
            "time_warp": x,
        }
        for x in _WARPS
    },
    "norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor0.3+edge0.25+warp0.7+70ep": _SEVENTY,
    **{
        f"norm+warp+h128+edge+band+offset+distil1+wd+mlp128+lr5+75ep+floor0.3+edge0.25+warp0.7+70ep+rank{x}": {
            **_SEVENTY,
            "input_rank": x,
        }
        for x in _RANKS
    },
    **{f"{_RANKED_NAME}+share{x}": {**_RANKED, "distill_weight": x} for x in _SHARES},
    **{f"{_RANKED_NAME}+share0.25+top{x}": {**_QUARTER, "average_top": x} for x in _AVERAGED},
    **{
        f"{_RANKED_NAME}+share0.25+top5+mean{x}": {**_TOP5, "teacher_members": 0, "teacher_decay": x}
        for x in _MEAN_DECAYS
    },
    **{f"{_RANKED_NAME}+share0.25+top5+label{x}": {**_TOP5, "label_weight": x} for x in _LABELS},
}


def recipe_config(name: str, threads: int = 0) -> TrainConfig:
    """The full config of a recipe (``default``: the current defaults)."""
    if name == "default":
        return TrainConfig(threads=threads)
    return TrainConfig(**{**BASE, **RECIPES[name], "threads": threads})


def _run_one(recipe: str, data_dir: Path, out: Path, threads: int) -> dict:
    from progress_stream.training.train import fit, load_training_data, run_scores

    cfg = recipe_config(recipe, threads)
    data = load_training_data(data_dir / "annotations.json", data_dir / "features", None, cfg.val_fraction)
    summary = fit(cfg, data, out / recipe / data_dir.name, verbose=False)
    return {"recipe": recipe, "data": data_dir.name, **run_scores(summary)}


def run_sweep(data_dirs: list[Path], recipes: list[str], out: Path, jobs: int = 1) -> list[dict]:
    """Train every recipe on every data folder (``jobs`` processes, one torch thread each when > 1)."""
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    threads = 1 if jobs > 1 else 0
    with ProcessPoolExecutor(jobs) as pool, (out / "sweep.jsonl").open("a") as log:
        futures = [pool.submit(_run_one, r, d, out, threads) for r in recipes for d in data_dirs]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="sweep", unit="run", disable=None):
            row = fut.result()
            rows.append(row)
            log.write(json.dumps(row) + "\n")
            log.flush()
    return rows


def sweep_table(rows: list[dict]) -> str:
    """Per recipe: OGPE ÷ length-Bayes per data folder, then the worst ratio, start bias and end shortfall."""
    datasets = sorted({r["data"] for r in rows})
    by_recipe: dict[str, dict[str, dict]] = {}
    for r in rows:
        by_recipe.setdefault(r["recipe"], {})[r["data"]] = r
    head = ["recipe", *datasets, "worst ÷ Bayes", "worst abs(start − true)", "worst end − true", "train s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(by_recipe, key=lambda k: max(r["ratio_to_bayes"] for r in by_recipe[k].values()))
    for name in order:
        got = by_recipe[name]
        cells = [f"{got[d]['ratio_to_bayes']:.3f}" if d in got else "—" for d in datasets]
        worst = max(r["ratio_to_bayes"] for r in got.values())
        start = max(abs(r["start_bias"]) for r in got.values())
        end = min(r["end_bias"] for r in got.values())
        secs = sum(r["train_seconds"] for r in got.values()) / len(got)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {worst:.3f} | {start:.3f} | {end:+.3f} | {secs:.0f} |")
    return "\n".join(lines)
