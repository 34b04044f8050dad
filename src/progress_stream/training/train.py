"""The training loop: dense or sampled-prefix regime, validation each epoch, best checkpoint kept."""

from __future__ import annotations

import copy
import json
import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from progress_stream.training.calibration import calibrate, edge_search, set_edge_offsets
from progress_stream.training.checkpoint import save_checkpoint
from progress_stream.training.config import ConfigError, TrainConfig
from progress_stream.training.data import Dataset, load_annotations, load_dataset, split_handles, validation_split
from progress_stream.training.evaluate import LengthBayes, predict_causal, progress_metrics
from progress_stream.training.label_probe import LabelProbe
from progress_stream.training.losses import progress_loss, quantile_loss
from progress_stream.training.mean_teacher import MeanTeacher
from progress_stream.training.model import AUX, LOWER, PROGRESS, UPPER, ProgressHead
from progress_stream.training.sampling import dense_batches, prefix_batches, sample_prefixes

log = logging.getLogger(__name__)
T = TypeVar("T")


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


@dataclass
class TrainingData:
    """The fit and validation actions of the training handles (the test handles are never read)."""

    fit: Dataset
    val: Dataset
    stats: dict
    source: dict

    @property
    def val_bayes_ogpe(self) -> float:
        """OGPE of the length-only Bayes baseline (from the fit lengths) on the validation actions."""
        bayes = LengthBayes(self.fit.lengths)
        return progress_metrics([bayes(int(n)) for n in self.val.lengths], self.val.lengths)["ogpe"]


def load_training_data(
    annotations: Path, features: Path, split: Path | None = None, val_fraction: float = 0.15
) -> TrainingData:
    videos = load_annotations(annotations)
    handles = split_handles(videos, split)
    inner = validation_split(videos, handles["train"], val_fraction, handles.get("val"))
    fit = load_dataset(videos, features, inner["fit"])
    val = load_dataset(videos, features, inner["val"])
    source = {
        "annotations": str(annotations),
        "split": str(split) if split else None,
        "validation_videos": len(inner["val"]),
    }
    return TrainingData(fit, val, data_statistics(fit, inner["fit"]), source)


def build_model(cfg: TrainConfig, data: TrainingData) -> ProgressHead:
    """The head ``cfg`` describes, its position reference and input normalisation fitted on the fit set."""
    model = ProgressHead(data.fit.dim, data.stats[f"length_{cfg.length_ref}"], **cfg.model_kwargs())
    model.fit_input_norm(torch.from_numpy(np.concatenate(data.fit.features)))
    return model


def build_probe(cfg: TrainConfig, data: TrainingData, device: torch.device) -> LabelProbe | None:
    """The label probe a head of ``cfg`` trains beside (built right after the head), or None without one."""
    if cfg.label_weight <= 0:
        return None
    return LabelProbe(cfg.members, cfg.hidden_dim, data.fit.label_ids[1]).to(device)


def _epoch_batches(cfg: TrainConfig, data: Dataset, rng: np.random.Generator, offset_scale: np.ndarray | None):
    """Yield ``(x, lengths, target, mask, labels)`` with the loss taken where ``mask`` is true."""
    if cfg.regime == "dense":
        batches = dense_batches(data, cfg.batch_size, rng, cfg.min_segment_len, cfg.time_warp, offset_scale)
        for x, lengths, labels in batches:
            steps = torch.arange(1, x.shape[1] + 1, dtype=torch.float32)
            target = (steps.unsqueeze(0) / lengths.unsqueeze(1)).clamp(max=1.0)
            yield x, lengths, target, steps.unsqueeze(0) <= lengths.unsqueeze(1), labels
    else:
        samples = sample_prefixes(
            data,
            rng,
            cfg.samples_per_video,
            cfg.frames_per_segment,
            cfg.min_segment_len,
            cfg.stratified_sampling,
        )
        for x, lengths, target, labels in prefix_batches(data, samples, cfg.batch_size, rng):
            yield x, lengths, target.unsqueeze(1), torch.ones(len(target), 1, dtype=torch.bool), labels


def _loss(
    model: ProgressHead,
    cfg: TrainConfig,
    batch: list[torch.Tensor],
    taught: torch.Tensor | None = None,
    states: torch.Tensor | None = None,
    probe: LabelProbe | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over members of each member's per-action loss (plus the auxiliary log-length and label terms),
    and the head's progress on the batch (detached: what it teaches). With ``taught`` (a teacher's progress
    on the same frames), the progress loss is shared between the truth and it. ``states``: the head's
    :meth:`ProgressHead.member_states` on the batch, where they were already computed; ``probe``: the
    head's :class:`LabelProbe` where ``cfg.label_weight`` asks for one."""
    x, lengths, target, mask, labels = batch
    if states is None:
        states = model.member_states(x, lengths)  # (M, B, T, hidden)
    if cfg.regime == "prefix":
        states = states.gather(2, (lengths - 1).view(1, -1, 1, 1).expand(states.shape[0], -1, 1, states.shape[-1]))
    out = model.readout(states)  # (M, B, T, N_OUTPUTS)
    raw = out[..., PROGRESS]
    pred = torch.sigmoid(raw) if model.output == "sigmoid" else raw
    edge = cfg.edge_weight if cfg.regime == "dense" else 0.0
    per_member = [progress_loss(p, target, mask, cfg.loss, cfg.weighted_loss, cfg.weight_cap, edge) for p in pred]
    loss = torch.stack(per_member).mean()
    if taught is not None:
        distilled = torch.stack(
            [progress_loss(p, taught, mask, cfg.loss, cfg.weighted_loss, cfg.weight_cap, edge, target) for p in pred]
        ).mean()
        loss = (1.0 - cfg.distill_weight) * loss + cfg.distill_weight * distilled
    if cfg.band_weight > 0:
        tails = (1.0 - cfg.coverage) / 2.0
        quantiles = model.activate(out[..., LOWER : UPPER + 1])
        band = [
            quantile_loss(q[..., 0], target, mask, tails) + quantile_loss(q[..., 1], target, mask, 1.0 - tails)
            for q in quantiles
        ]
        loss = loss + cfg.band_weight * torch.stack(band).mean()
    if cfg.aux_weight > 0:
        # the action's length: a prefix of p frames has target p / L
        total = lengths.unsqueeze(1) / target.clamp(min=1e-6) if cfg.regime == "prefix" else lengths.unsqueeze(1)
        aux_target = (torch.log1p(total.to(torch.float32)) / torch.log1p(model.length_ref)).expand_as(target)
        aux = torch.stack([progress_loss(a, aux_target, mask) for a in out[..., AUX]]).mean()
        loss = loss + cfg.aux_weight * aux
    if probe is not None:
        loss = loss + cfg.label_weight * probe.loss(states, labels, mask)
    return loss, model.activate(raw.mean(dim=0)).detach()


class SideBySide:
    """One training step of the head and its teacher on a batch.

    The two graphs share nothing (the teacher's progress reaches the head's loss detached), so with two
    or more threads to spend, the teacher's forward and backward passes run on a worker thread while the
    head's run here, each on half the threads: on a small GRU a second core speeds one pass up by a
    quarter, while two passes side by side take half the time. The gradients are the same either way.
    """

    def __init__(
        self,
        model: ProgressHead,
        cfg: TrainConfig,
        teacher: ProgressHead,
        teacher_cfg: TrainConfig,
        probes: tuple[LabelProbe | None, LabelProbe | None] = (None, None),
    ):
        self.model, self.cfg, self.teacher, self.teacher_cfg = model, cfg, teacher, teacher_cfg
        self.probe, self.teacher_probe = probes
        cpu = next(model.parameters()).device.type == "cpu"
        self.threads = torch.get_num_threads() if cpu else 1
        self.pool: ThreadPoolExecutor | None = None

    @contextmanager
    def epoch(self) -> Iterator[None]:
        """Run the steps inside on two threads of half the budget each (one after the other with fewer than
        two); the budget is whole again outside, for validation."""
        if self.threads < 2:
            yield
            return
        torch.set_num_threads(self.threads // 2)
        try:
            with ThreadPoolExecutor(1, thread_name_prefix="teacher") as self.pool:
                yield
        finally:
            self.pool = None
            torch.set_num_threads(self.threads)

    def _start(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        done: Future[T] = Future()
        done.set_result(fn(*args))
        return done

    def step(self, batch: list[torch.Tensor]) -> torch.Tensor:
        """Both nets' gradients on ``batch``; returns the sum of their losses (detached)."""
        teaching = self._start(partial(_loss, probe=self.teacher_probe), self.teacher, self.teacher_cfg, batch)
        states = self.model.member_states(*batch[:2])
        teacher_loss, taught = teaching.result()
        loss, _ = _loss(self.model, self.cfg, batch, taught, states, self.probe)
        learning = self._start(teacher_loss.backward)
        loss.backward()
        learning.result()
        return loss.detach() + teacher_loss.detach()


def decay_groups(nets: list[nn.Module], weight_decay: float) -> list[dict]:
    """Optimiser groups: weight decay on the weight matrices only. Decaying the biases and the learned initial
    state as well pulls every answer towards the sigmoid's middle, the squeeze the head exists to undo."""
    decayed, kept = [], []
    for net in nets:
        for name, p in net.named_parameters():
            (decayed if name.rsplit(".", 1)[-1].startswith("weight") else kept).append(p)
    return [{"params": decayed, "weight_decay": weight_decay}, {"params": kept, "weight_decay": 0.0}]


def lr_schedule(opt: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """A cosine from ``lr`` down to ``lr × lr_floor`` over the epochs. The epochs validation keeps fall in the
    middle of training; a floor keeps the late steps large enough to go on visiting such states instead of
    settling into the converged end, which reads held-out videos worse."""
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs, eta_min=cfg.lr * cfg.lr_floor)


@dataclass
class Candidate:
    """An epoch's head as validation read it: the served score, the start and end offsets that give it, the
    raw metrics and the weights."""

    served: float
    epoch: int
    offsets: np.ndarray | None
    val_raw: dict
    state: dict[str, torch.Tensor]


def keep_best(candidates: list[Candidate], new: Candidate, k: int) -> list[Candidate]:
    """The ``k`` candidates that served best, best first (the earlier epoch first on a tie)."""
    return sorted([*candidates, new], key=lambda c: c.served)[:k]


def mean_state(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The element-wise mean of state dicts of one architecture: their weights averaged."""
    return {name: torch.stack([s[name] for s in states]).mean(dim=0) for name in states[0]}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def fit(cfg: TrainConfig, data: TrainingData, out: Path, verbose: bool = True) -> dict:
    """Train on ``data.fit``, validating each epoch; the best epoch goes to ``out/best.pt``. Returns a summary.

    The best epoch is the one whose answers would serve best: each epoch's validation answers are scored
    after the start and end offsets calibration would give them (:func:`edge_search`), so a head whose
    start or end only those offsets can mend is judged as it would be served. With ``average_top`` > 1 the
    mean of the weights of that many best epochs is kept instead where it serves better still
    (:func:`_served_head`). The summary's ``val`` holds the served head's metrics (offsets in place);
    ``val_raw`` the kept head's before them; ``averaged_epochs`` the epochs whose weights it holds;
    ``band_halves`` the band's coverage per action length on held-out halves of the validation videos.

    With ``teacher_members`` > 0, a teacher of that many members (the same recipe otherwise, its own
    initialisation) trains side by side with the head on the same batches, and the head learns from the
    teacher's progress as well as from the truth: a second opinion that averages away some of the noise
    one net fits, at one member's cost per frame.
    The teacher learns progress only (its band is never used) and its gradients are clipped on their own,
    so its norm never scales the head's steps; with two threads or more, its passes run beside the head's
    (:class:`SideBySide`). With ``teacher_decay`` > 0 the teacher is instead the
    moving average of the head's own weights (:class:`MeanTeacher`), which costs one forward pass per batch
    and no training of its own. Only the head is kept.
    """
    if cfg.regime == "dense" and cfg.position_encoding == "relative":
        raise ConfigError("the relative encoding changes with the prefix length: train it with regime=prefix")
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    model = build_model(cfg, data).to(device)
    probe = build_probe(cfg, data, device)
    teacher, teacher_cfg, teacher_probe = None, cfg, None
    if cfg.teacher_members > 0:
        teacher_cfg = cfg.replace(members=cfg.teacher_members, teacher_members=0, band_weight=0.0)
        teacher = build_model(teacher_cfg, data).to(device)
        teacher_probe = build_probe(teacher_cfg, data, device)
    # each net with the probe it trains beside (if any): their gradients are clipped together
    nets = [[m for m in group if m is not None] for group in ([model, probe], [teacher, teacher_probe])]
    clipped = [[p for m in group for p in m.parameters()] for group in nets if group]
    pair = SideBySide(model, cfg, teacher, teacher_cfg, (probe, teacher_probe)) if teacher is not None else None
    mean_teacher = MeanTeacher(model, cfg.teacher_decay) if cfg.teacher_decay > 0 else None
    opt = torch.optim.AdamW(decay_groups([m for group in nets for m in group], cfg.weight_decay), lr=cfg.lr)
    sched = lr_schedule(opt, cfg)
    rng = np.random.default_rng(cfg.seed)
    offset_scale = cfg.feature_offset / model.input_scale.cpu().numpy() if cfg.feature_offset > 0 else None
    bayes_ogpe = data.val_bayes_ogpe
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    candidates: list[Candidate] = []
    history = []
    started = time.perf_counter()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        if teacher is not None:
            teacher.train()
        batches = list(_epoch_batches(cfg, data.fit, rng, offset_scale))
        bar = tqdm(batches, desc=f"epoch {epoch}/{cfg.epochs}", leave=False, disable=None if verbose else True)
        running = None
        with pair.epoch() if pair is not None else nullcontext():
            for batch in bar:
                batch = [t.to(device) for t in batch]
                opt.zero_grad()
                if pair is not None:
                    loss = pair.step(batch)
                else:
                    taught = mean_teacher.progress(*batch[:2]) if mean_teacher is not None else None
                    loss, _ = _loss(model, cfg, batch, taught, probe=probe)
                    loss.backward()
                for params in clipped:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                if mean_teacher is not None:
                    mean_teacher.update(model)
                running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
                bar.set_postfix(loss=f"{running:.4f}", refresh=False)
        sched.step()
        val, offsets, served = _served_score(model, data.val, bayes_ogpe)
        history.append({"epoch": epoch, "loss": running, "val_ogpe": val["ogpe"], "served_ogpe": served})
        if verbose:
            tqdm.write(
                f"epoch {epoch:3d}  loss {running:.4f}  val OGPE {val['ogpe']:.4f} "
                f"({val['ratio_to_bayes']:.2f}× Bayes)  start {val['start_mean']:.3f}/{val['start_true']:.3f}  "
                f"end {val['end_mean']:.3f}/{val['end_true']:.3f}  served {served:.4f}"
            )
        if len(candidates) < cfg.average_top or served < candidates[-1].served:
            new = Candidate(served, epoch, offsets, val, copy.deepcopy(model.state_dict()))
            candidates = keep_best(candidates, new, cfg.average_top)
    kept, epochs = _served_head(model, candidates, data.val, bayes_ogpe)
    model.load_state_dict(kept.state)
    best = {"epoch": kept.epoch, "averaged_epochs": epochs, "val_raw": kept.val_raw}
    if model.streamable:  # the kept head's own search: its answers were scored with these offsets
        best["progress_offsets"] = set_edge_offsets(model, kept.offsets)
        best.update(calibrate(model, data.val, cfg.coverage))
    best["val"] = _val_metrics(predict_causal(model, data.val).progress, data.val.lengths, bayes_ogpe)
    save_checkpoint(out / "best.pt", model, cfg, {**data.stats, **data.source}, best)
    seconds = time.perf_counter() - started
    summary = {
        "best_epoch": best["epoch"],
        "averaged_epochs": best["averaged_epochs"],
        "val": best["val"],
        "band_halves": best.get("band_halves"),  # None: a relative head has no band
        "train_seconds": seconds,
        "history": history,
    }
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    (out / "train_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _served_head(
    model: ProgressHead, candidates: list[Candidate], val: Dataset, bayes_ogpe: float
) -> tuple[Candidate, list[int]]:
    """The best epoch, or the mean of the candidates' weights where that serves validation better still; and
    the epochs whose weights it holds.

    The epochs validation reads best lie along one trajectory that the learning rate's floor keeps moving;
    their mean sits nearer the middle of the region they visit, which reads held-out videos better than
    any one of them. It is scored as each epoch was, after its own start and end offsets, and kept only if
    it beats the best epoch, so it never serves validation worse.
    """
    best = candidates[0]
    if len(candidates) < 2:
        return best, [best.epoch]
    model.load_state_dict(mean_state([c.state for c in candidates]))
    raw, offsets, served = _served_score(model, val, bayes_ogpe)
    if served < best.served:
        return Candidate(served, best.epoch, offsets, raw, model.state_dict()), sorted(c.epoch for c in candidates)
    return best, [best.epoch]


def _served_score(model: ProgressHead, val: Dataset, bayes_ogpe: float) -> tuple[dict, np.ndarray | None, float]:
    """The head's raw validation metrics, the start and end offsets that would serve it, and the score it
    serves with them (:func:`edge_search`; the raw OGPE where the head cannot stream)."""
    answers = predict_causal(model, val).progress
    raw = _val_metrics(answers, val.lengths, bayes_ogpe)
    offsets, served = edge_search(answers, val.lengths) if model.streamable else (None, raw["ogpe"])
    return raw, offsets, served


def _val_metrics(answers: list[np.ndarray], lengths: np.ndarray, bayes_ogpe: float) -> dict:
    """Progress metrics on the validation actions, with length-Bayes' OGPE and the ratio to it."""
    val = progress_metrics(answers, lengths)
    return {**val, "bayes_ogpe": bayes_ogpe, "ratio_to_bayes": val["ogpe"] / bayes_ogpe}


def run_scores(summary: dict) -> dict:
    """The validation scores of a :func:`fit` summary that sweeps and searches log and rank by."""
    val = summary["val"]
    return {
        "val_ogpe": val["ogpe"],
        "ratio_to_bayes": val["ratio_to_bayes"],
        "start_bias": val["start_mean"] - val["start_true"],
        "end_bias": val["end_mean"] - val["end_true"],
        "best_epoch": summary["best_epoch"],
        "train_seconds": summary["train_seconds"],
    }


def train(cfg: TrainConfig, annotations: Path, features: Path, out: Path, split: Path | None = None) -> dict:
    """Load the training handles' data, then :func:`fit`; writes ``out/best.pt`` and returns its metrics."""
    return fit(cfg, load_training_data(annotations, features, split, cfg.val_fraction), out)
