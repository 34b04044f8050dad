"""``progress eval``: run every head and baseline causally on the test handles; write the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from progress_stream.training.calibration import HALF_SPAN
from progress_stream.training.checkpoint import load_checkpoint
from progress_stream.training.data import action_lengths, load_annotations, load_dataset, split_handles
from progress_stream.training.evaluate import (
    LENGTH_BINS,
    LengthBayesBand,
    band_metrics,
    baselines,
    bin_name,
    predict_causal,
    progress_metrics,
    remaining_metrics,
)
from progress_stream.training.plots import band_plot, calibration_plot, curves_plot


def run_evaluation(
    checkpoints: dict[str, Path],
    annotations: Path,
    features: Path,
    out: Path,
    split: Path | None = None,
    own_features: dict[str, Path] | None = None,
) -> str:
    """Evaluate each named checkpoint and the baselines; writes report.md, metrics.json and plots.

    ``own_features`` gives a checkpoint its own feature folder (the phase oracle reads ``phase/``);
    the actions, and so the metrics, are the same for every model.
    """
    videos = load_annotations(annotations)
    handles = split_handles(videos, split)
    test = load_dataset(videos, features, handles["test"])
    train_lengths = action_lengths(videos, handles["train"])
    preds: dict[str, list[np.ndarray]] = {}
    bands: dict[str, list[np.ndarray]] = {}
    details: dict[str, dict] = {}
    for name, path in checkpoints.items():
        model, ckpt = load_checkpoint(str(path))
        folder = (own_features or {}).get(name)
        answers = predict_causal(model, test if folder is None else load_dataset(videos, folder, handles["test"]))
        preds[name] = answers.progress
        if model.streamable:  # a relative head's band is never calibrated: it cannot stream
            bands[name] = answers.band
        details[name] = {
            "coverage_nominal": ckpt.train_config.coverage,
            "checkpoint": str(path),
            "features": str(folder or features),
            **ckpt.model_config,
            "regime": ckpt.train_config.regime,
            "streamable": model.streamable,
            "band_halves": ckpt.metrics.get("band_halves", {}),
        }
    for name, fn in baselines(train_lengths).items():
        preds[name] = [fn(len(f)) for f in test.features]
    if "model" in bands:  # the content-free band at the model's coverage: what the elapsed time alone gives
        details["length_bayes"] = {"coverage_nominal": details["model"]["coverage_nominal"]}
        content_free = LengthBayesBand(train_lengths, details["model"]["coverage_nominal"])
        bands["length_bayes"] = [content_free(len(f)) for f in test.features]
    metrics = {name: progress_metrics(p, test.lengths) for name, p in preds.items()}
    for name, band in bands.items():
        metrics[name]["coverage_nominal"] = details[name]["coverage_nominal"]
        metrics[name]["band"] = band_metrics(band, test.lengths)
        metrics[name]["remaining"] = remaining_metrics(preds[name], band, test.lengths, train_lengths)
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
    if "model" in bands:
        band_plot(test, bands["model"], details["model"]["coverage_nominal"], out / "band.png")
    table = markdown_table(metrics, details)
    (out / "report.md").write_text(_report(table, summary, checkpoints))
    return table


def markdown_table(metrics: dict[str, dict], details: dict[str, dict]) -> str:
    """One row per model/baseline: OGPE, its ratio to length-only Bayes, start/end means, length bins."""
    bayes = metrics["length_bayes"]["ogpe"]
    bins = [bin_name(lo, hi) for lo, hi in LENGTH_BINS]
    head = [
        "model",
        "encoding",
        "OGPE",
        "÷ Bayes",
        "frame OGPE",
        "norm. OGPE",
        "start (true)",
        "end (true)",
        "coverage (nominal)",
        "width",
        "remaining MdAE (content-free)",
    ]
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
        if "band" in m:
            nominal = details[name]["coverage_nominal"]
            row += [
                f"{m['band']['coverage']:.3f} ({nominal:.2f})",
                f"{m['band']['width']:.3f}",
                f"{m['remaining']['model']:.1f} ({m['remaining']['bayes']:.1f})",
            ]
        else:
            row += ["—"] * 3
        row += ["—" if m["length_bins"][b]["ogpe"] is None else f"{m['length_bins'][b]['ogpe']:.3f}" for b in bins]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


#: The targets the default must meet on every family and stride (held-out videos, causal).
MAX_RATIO_TO_BAYES = 0.60
MAX_START_ERROR = 0.05
MAX_END_SHORTFALL = 0.08
#: The band's coverage must lie this close to nominal overall and in every length bin with enough actions.
MAX_COVERAGE_ERROR = 0.05
MIN_BIN_ACTIONS = 50


def target_checks(models: dict[str, dict], name: str = "model") -> list[tuple[str, bool, str]]:
    """``(what, met, measured)`` for each target, for model ``name`` of a metrics table."""
    m, bayes = models[name], models["length_bayes"]["ogpe"]
    start, end = m["start_mean"] - m["start_true"], m["end_mean"] - m["end_true"]
    return [
        (
            f"OGPE ≤ {MAX_RATIO_TO_BAYES:.2f} × length-only Bayes",
            m["ogpe"] <= MAX_RATIO_TO_BAYES * bayes,
            f"{m['ogpe'] / bayes:.2f}×",
        ),
        (f"start mean within {MAX_START_ERROR} of truth", abs(start) <= MAX_START_ERROR, f"{start:+.3f}"),
        (f"end mean at most {MAX_END_SHORTFALL} below truth", end >= -MAX_END_SHORTFALL, f"{end:+.3f}"),
        *band_checks(m),
    ]


def worst_coverage(m: dict) -> float:
    """The band's coverage farthest from nominal: overall or in a length bin with enough actions."""
    nominal = m["coverage_nominal"]
    bins = [v["coverage"] for v in m["band"]["length_bins"].values() if v["n"] >= MIN_BIN_ACTIONS]
    return max([m["band"]["coverage"], *bins], key=lambda c: abs(c - nominal))


def band_checks(m: dict) -> list[tuple[str, bool, str]]:
    """The band's coverage (overall and per length bin with enough actions) within
    :data:`MAX_COVERAGE_ERROR` of nominal; the time to finish ahead of the content-free estimate."""
    if "band" not in m:
        return []
    nominal, worst = m["coverage_nominal"], worst_coverage(m)
    rem = {k: v for k, v in m["remaining"]["length_bins"].items() if v["n"] >= MIN_BIN_ACTIONS}
    beaten = m["remaining"]["model"] < m["remaining"]["bayes"] and all(v["model"] < v["bayes"] for v in rem.values())
    return [
        (
            f"coverage within {MAX_COVERAGE_ERROR} of nominal, overall and per length bin",
            abs(worst - nominal) <= MAX_COVERAGE_ERROR,
            f"worst {worst:.3f} (nominal {nominal:.2f})",
        ),
        (
            "time to finish ahead of the content-free estimate, overall and per length bin",
            beaten,
            f"{m['remaining']['model']:.1f} vs {m['remaining']['bayes']:.1f} frames",
        ),
    ]


def family_summary(reports: list[Path]) -> str:
    """One row per report folder (family × stride): OGPE ÷ length-Bayes of every model, the default's checks."""
    rows = []
    names: list[str] = []
    for folder in reports:
        models = json.loads((Path(folder) / "metrics.json").read_text())["models"]
        names += [n for n in models if n not in names]
        rows.append((Path(folder).name, models))
    head = [
        "data",
        *(("default" if n == "model" else n) for n in names),
        "start − true",
        "end − true",
        "coverage (worst bin)",
        "width",
        "remaining MdAE (content-free)",
        "targets met",
    ]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for data, models in rows:
        bayes = models["length_bayes"]["ogpe"]
        ratios = [f"{models[n]['ogpe'] / bayes:.3f}" if n in models else "—" for n in names]
        checks = target_checks(models)
        met = (
            "yes"
            if all(ok for _, ok, _ in checks)
            else "no: " + ", ".join(w.split(" ")[0] for w, ok, _ in checks if not ok)
        )
        m = models["model"]
        band = (
            [
                f"{m['band']['coverage']:.3f} ({worst_coverage(m):.3f})",
                f"{m['band']['width']:.3f}",
                f"{m['remaining']['model']:.1f} ({m['remaining']['bayes']:.1f})",
            ]
            if "band" in m
            else ["—"] * 3
        )
        lines.append(f"| {data} | " + " | ".join([*ratios, checks[1][2], checks[2][2], *band, met]) + " |")
    return "\n".join(lines)


def band_table(models: dict[str, dict], halves: dict[str, dict]) -> str:
    """Per length bin: the band's coverage and width beside the content-free band's coverage and the
    coverage training read on held-out halves of its validation videos (``halves``, the checkpoint's
    ``band_halves``), and the time to finish's median error against the content-free estimate's (frames)."""
    m, free = models["model"], models["length_bayes"].get("band")
    if "band" not in m:
        return "The model has no band (a relative head cannot stream)."
    lines = [
        f"The band (nominal coverage {m['coverage_nominal']:.0%}) and the time to finish, per action length "
        "(content-free: the interval and the estimate from the elapsed time alone; validation halves: the "
        f"median coverage, and its {HALF_SPAN} range, of the band refitted on half of the validation videos and "
        "read on the other half, where a half holds enough of the bin's actions):",
        "",
        "| length | actions | coverage | validation halves | content-free coverage | width | remaining MdAE "
        "| content-free MdAE |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, b in m["band"]["length_bins"].items():
        r, h = m["remaining"]["length_bins"][name], halves.get(name)
        spread = f"{h['median']:.2f} ({h['low']:.2f}–{h['high']:.2f})" if h else "—"
        if b["n"]:
            lines.append(
                f"| {name} | {b['n']} | {b['coverage']:.3f} | {spread} | "
                f"{free['length_bins'][name]['coverage']:.3f} | {b['width']:.3f} | {r['model']:.1f} | "
                f"{r['bayes']:.1f} |"
            )
    lines.append(
        f"| all | | {m['band']['coverage']:.3f} | | {free['coverage']:.3f} | {m['band']['width']:.3f} | "
        f"{m['remaining']['model']:.1f} | {m['remaining']['bayes']:.1f} |"
    )
    return "\n".join(lines)


def _report(table: str, summary: dict, checkpoints: dict[str, Path]) -> str:
    t = summary["test"]
    n_bins = {
        bin_name(lo, hi): summary["models"]["oracle"]["length_bins"][bin_name(lo, hi)]["n"] for lo, hi in LENGTH_BINS
    }
    check_lines = "\n".join(
        f"- [{'x' if ok else ' '}] {what}: {value}" for what, ok, value in target_checks(summary["models"])
    )
    models = "\n".join(f"- `{name}`: `{path}`" for name, path in checkpoints.items())
    band_section = band_table(summary["models"], summary["details"]["model"]["band_halves"])
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

{band_section}

Plots: `curves.png` (sample short/medium/long test actions), `calibration.png` (mean prediction per
true-progress decile), `band.png` (the band's coverage per true-progress decile and per length bin).
"""
