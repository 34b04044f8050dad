"""The training loop: dense or sampled-prefix regime, validation each epoch, best checkpoint kept."""

from __future__ import annotations

import json
import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.config import TrainConfig
from training.data import Dataset, load_annotations, load_dataset, split_handles, validation_split
from training.evaluate import predict_causal, progress_metrics
from training.losses import weighted_l1
from training.model import ProgressHead
from training.sampling import dense_batches, prefix_batches, sample_prefixes

log = logging.getLogger(__name__)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def data_statistics(data: Dataset, handles: list[str]) -> dict:
    lengths = data.lengths
    return {
        "videos": len(handles),
        "actions": len(lengths),
        "frames": int(lengths.sum()),
        "embedding_dim": data.dim,
        "length_median": float(np.median(lengths)),
        "length_mean": float(lengths.mean()),
        "length_p90": float(np.percentile(lengths, 90)),
        "length_max": int(lengths.max()),
    }


def build_model(cfg: TrainConfig, dim: int, stats: dict) -> ProgressHead:
    return ProgressHead(
        input_dim=dim,
        hidden_dim=cfg.hidden_dim,
        position_encoding=cfg.position_encoding,
        learn_h0=cfg.learn_h0,
        mlp_dim=cfg.mlp_dim,
        output=cfg.output,
        length_ref=stats[f"length_{cfg.length_ref}"],
    )


def _epoch_batches(cfg: TrainConfig, data: Dataset, rng: np.random.Generator):
    """Yield ``(x, lengths, target, mask)`` with the loss taken where ``mask`` is true."""
    if cfg.regime == "dense":
        for x, lengths in dense_batches(data, cfg.batch_size, rng, cfg.min_segment_len):
            steps = torch.arange(1, x.shape[1] + 1, dtype=torch.float32)
            target = (steps.unsqueeze(0) / lengths.unsqueeze(1)).clamp(max=1.0)
            yield x, lengths, target, steps.unsqueeze(0) <= lengths.unsqueeze(1)
    elif cfg.regime == "prefix":
        samples = sample_prefixes(
            data,
            rng,
            cfg.samples_per_video,
            cfg.frames_per_segment,
            cfg.min_segment_len,
            cfg.stratified_sampling,
        )
        for x, lengths, target in prefix_batches(data, samples, cfg.batch_size, rng):
            yield x, lengths, target.unsqueeze(1), torch.ones(len(target), 1, dtype=torch.bool)
    else:
        raise ValueError(f"regime must be 'dense' or 'prefix', not {cfg.regime!r}")


def _loss(model: ProgressHead, cfg: TrainConfig, batch, device: torch.device) -> torch.Tensor:
    x, lengths, target, mask = (t.to(device) for t in batch)
    raw = model.raw(x, lengths)
    if cfg.regime == "prefix":
        raw = raw.gather(1, (lengths - 1).unsqueeze(1))
    pred = torch.sigmoid(raw) if model.output == "sigmoid" else raw
    return weighted_l1(pred, target, mask, cfg.weighted_loss, cfg.weight_cap)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig, annotations: Path, features: Path, out: Path, split: Path | None = None) -> dict:
    """Train, validating each epoch on held-out training videos; writes ``out/best.pt`` and returns its metrics."""
    if cfg.regime == "dense" and cfg.position_encoding == "relative":
        raise ValueError("the relative encoding changes with the prefix length: train it with regime=prefix")
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    videos = load_annotations(annotations)
    train_handles = split_handles(videos, split)["train"]
    inner = validation_split(videos, train_handles, cfg.val_fraction)
    fit = load_dataset(videos, features, inner["fit"])
    val = load_dataset(videos, features, inner["val"], min_length=1)
    stats = data_statistics(fit, inner["fit"])
    model = build_model(cfg, fit.dim, stats).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    rng = np.random.default_rng(cfg.seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    best: dict = {"val": {"ogpe": float("inf")}}
    history = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        bar = tqdm(list(_epoch_batches(cfg, fit, rng)), desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None)
        running = None
        for batch in bar:
            loss = _loss(model, cfg, batch, device)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
            bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        sched.step()
        val_metrics = progress_metrics(predict_causal(model, val), val.lengths)
        history.append({"epoch": epoch, "loss": running, "val_ogpe": val_metrics["ogpe"]})
        tqdm.write(
            f"epoch {epoch:3d}  loss {running:.4f}  val OGPE {val_metrics['ogpe']:.4f}  "
            f"start {val_metrics['start_mean']:.3f}/{val_metrics['start_true']:.3f}  "
            f"end {val_metrics['end_mean']:.3f}/{val_metrics['end_true']:.3f}"
        )
        if val_metrics["ogpe"] < best["val"]["ogpe"]:
            best = {"epoch": epoch, "val": val_metrics}
            torch.save(
                {
                    "state_dict": model.state_dict(),
                    "model_config": model.config,
                    "train_config": cfg.to_dict(),
                    "data": {
                        **stats,
                        "annotations": str(annotations),
                        "split": str(split) if split else None,
                        "validation_videos": len(inner["val"]),
                    },
                    "metrics": {"epoch": epoch, "val": val_metrics},
                },
                out / "best.pt",
            )
    seconds = time.perf_counter() - started
    summary = {"best_epoch": best["epoch"], "val": best["val"], "train_seconds": seconds, "history": history}
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary
