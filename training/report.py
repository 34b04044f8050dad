"""``progress eval``: run every head and baseline causally on the test handles; write the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from training.data import action_lengths, load_annotations, load_dataset, split_handles
from training.evaluate import LENGTH_BINS, baselines, bin_name, predict_causal, progress_metrics
from training.model import load_checkpoint
from training.plots import calibration_plot, curves_plot


def run_evaluation(
    checkpoints: dict[str, Path], annotations: Path, features: Path, out: Path, split: Path | None = None
) -> str:
    """Evaluate each named checkpoint and the baselines; writes report.md, metrics.json and plots."""
    videos = load_annotations(annotations)
    handles = split_handles(videos, split)
    test = load_dataset(videos, features, handles["test"])
    train_lengths = action_lengths(videos, handles["train"])
    preds: dict[str, list[np.ndarray]] = {}
    details: dict[str, dict] = {}
    for name, path in checkpoints.items():
        model, ckpt = load_checkpoint(str(path))
        preds[name] = predict_causal(model, test)
        details[name] = {
            "checkpoint": str(path),
            **ckpt["model_config"],
            "regime": ckpt["train_config"]["regime"],
            "streamable": model.streamable,
        }
    for name, fn in baselines(train_lengths).items():
        preds[name] = [fn(len(f)) for f in test.features]
    metrics = {name: progress_metrics(p, test.lengths) for name, p in preds.items()}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "models": metrics,
        "details": details,
        "test": {
            "videos": len(handles["test"]),
            "actions": len(test.actions),
            "frames": int(test.lengths.sum()),
        },
    }
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    curves_plot(test, preds, out / "curves.png")
    calibration_plot(test, {k: v for k, v in preds.items() if k not in ("oracle",)}, out / "calibration.png")
    table = markdown_table(metrics, details)
    (out / "report.md").write_text(_report(table, summary, checkpoints))
    return table


def markdown_table(metrics: dict[str, dict], details: dict[str, dict]) -> str:
    """One row per model/baseline: OGPE, its ratio to length-only Bayes, start/end means, length bins."""
    bayes = metrics["length_bayes"]["ogpe"]
    bins = [bin_name(lo, hi) for lo, hi in LENGTH_BINS]
    head = ["model", "encoding", "OGPE", "÷ Bayes", "frame OGPE", "norm. OGPE", "start (true)", "end (true)"]
    lines = [
        "| " + " | ".join(head + [f"L {b}" for b in bins]) + " |",
        "|" + "---|" * (len(head) + len(bins)),
    ]
    for name, m in metrics.items():
        enc = details.get(name, {}).get("position_encoding", "—")
        row = [
            name,
            enc,
            f"{m['ogpe']:.4f}",
            f"{m['ogpe'] / bayes:.2f}",
            f"{m['ogpe_frames']:.4f}",
            f"{m['ogpe_normalised']:.3f}",
            f"{m['start_mean']:.3f} ({m['start_true']:.3f})",
            f"{m['end_mean']:.3f} ({m['end_true']:.3f})",
        ]
        row += ["—" if m["length_bins"][b]["ogpe"] is None else f"{m['length_bins'][b]['ogpe']:.3f}" for b in bins]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def _report(table: str, summary: dict, checkpoints: dict[str, Path]) -> str:
    t = summary["test"]
    n_bins = {
        bin_name(lo, hi): summary["models"]["oracle"]["length_bins"][bin_name(lo, hi)]["n"] for lo, hi in LENGTH_BINS
    }
    m = summary["models"]["model"]
    bayes = summary["models"]["length_bayes"]["ogpe"]
    checks = [
        ("OGPE ≤ 0.75 × length-only Bayes", m["ogpe"] <= 0.75 * bayes, f"{m['ogpe'] / bayes:.2f}×"),
        (
            "start mean within 0.08 of truth",
            abs(m["start_mean"] - m["start_true"]) <= 0.08,
            f"{m['start_mean'] - m['start_true']:+.3f}",
        ),
        (
            "end mean within 0.10 of truth",
            abs(m["end_mean"] - m["end_true"]) <= 0.10,
            f"{m['end_mean'] - m['end_true']:+.3f}",
        ),
    ]
    check_lines = "\n".join(f"- [{'x' if ok else ' '}] {what}: {value}" for what, ok, value in checks)
    models = "\n".join(f"- `{name}`: `{path}`" for name, path in checkpoints.items())
    return f"""# Progress evaluation (causal, held-out test videos)

Test set: {t["videos"]} videos, {t["actions"]} actions, {t["frames"]} frames.
Actions per length bin: {", ".join(f"{k}: {v}" for k, v in n_bins.items())}.

{table}

OGPE: mean over actions of each action's mean |prediction − (i+1)/L|. "start"/"end": mean prediction over the
first/last 10 % of each action's frames (the same mean of the true progress in brackets). Baselines:
`constant_0.5`; `length_bayes`, the best content-free predictor (sees only how many frames have passed);
`oracle`, the true progress (checks the metric: 0).

Checks for `model`:
{check_lines}

Checkpoints:
{models}

Plots: `curves.png` (sample short/medium/long test actions), `calibration.png` (mean prediction per
true-progress decile).
"""
