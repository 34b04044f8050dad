"""``progress train --search N``: a bounded Optuna search on the user's own validation videos.

For features unlike anything tested here, the default may not be the best recipe. The search trains
up to N configs (the first is the user's own config, so it never ends worse than that on validation),
scores each by validation OGPE, logs every trial to ``search.jsonl`` and writes the best as
``best.pt`` with its ``config.json``. The time budget is checked between trials.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import optuna

from progress_stream.training.config import TrainConfig
from progress_stream.training.train import TrainingData, fit, run_scores

#: What the search varies (everything else is the base config's).
SPACE: dict[str, tuple[Any, ...]] = {
    "hidden_dim": (32, 64, 128),
    "layers": (1, 2),
    "members": (1, 3),
    "input_norm": ("standardize", "none"),
    "weighted_loss": (False, True),
    "edge_weight": (0.0, 0.5, 1.0),
    "epochs": (20, 40),
}


#: Continuous ranges: (low, high, log scale).
RANGES: dict[str, tuple[float, float, bool]] = {
    "lr": (1e-3, 1e-2, True),
    "time_warp": (0.0, 0.6, False),
    "dropout": (0.0, 0.3, False),
    "weight_decay": (0.0, 1.0, False),
    "lr_floor": (0.0, 0.5, False),
}


def _suggest(trial: optuna.Trial, base: TrainConfig) -> dict[str, Any]:
    """A config from the space, widened to hold the base config's own values (trial 0 replays them)."""
    values = {}
    for name, choices in SPACE.items():
        values[name] = trial.suggest_categorical(name, list(dict.fromkeys((*choices, getattr(base, name)))))
    for name, (low, high, log) in RANGES.items():
        own = getattr(base, name)
        values[name] = trial.suggest_float(name, min(low, own), max(high, own), log=log)
    return values


def run_search(base: TrainConfig, data: TrainingData, out: Path, trials: int, minutes: float) -> dict:
    """Search ``trials`` configs within ``minutes``; returns the best trial's summary (also in ``out``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=base.seed))
    study.enqueue_trial({k: getattr(base, k) for k in [*SPACE, *RANGES]})
    results: dict[int, dict] = {}

    def objective(trial: optuna.Trial) -> float:
        cfg = base.replace(**_suggest(trial, base))
        summary = fit(cfg, data, out / "trials" / f"{trial.number:03d}", verbose=False)
        results[trial.number] = {"trial": trial.number, "config": cfg.to_dict(), **run_scores(summary)}
        with (out / "search.jsonl").open("a") as log:
            log.write(json.dumps(results[trial.number]) + "\n")
        return summary["val"]["ogpe"]

    logging.getLogger("training").setLevel(logging.WARNING)
    study.optimize(objective, n_trials=trials, timeout=minutes * 60, show_progress_bar=True)
    best = results[study.best_trial.number]
    shutil.copyfile(out / "trials" / f"{best['trial']:03d}" / "best.pt", out / "best.pt")
    (out / "config.json").write_text(json.dumps(best["config"], indent=2))
    (out / "search_summary.json").write_text(json.dumps({"best": best, "trials": len(results)}, indent=2))
    return best
