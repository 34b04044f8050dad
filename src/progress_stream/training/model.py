"""The ProgressHead: GRUs over (normalised) embeddings plus a position feature, a small MLP on top.

The position feature and the input normalisation are computed here and only here; the exported ONNX
cell traces :meth:`ProgressHead.step`, so the service gets both through the graph. A head may hold
several members (a seed ensemble): their states are concatenated into one state vector and their
outputs averaged, so it is still one cell with O(1) work per frame.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

#: Outputs of every member's MLP: progress, the auxiliary log-length target (training only), then the
#: band's lower and upper quantiles (pre-activation).
N_OUTPUTS = 4
PROGRESS, AUX, LOWER, UPPER = range(N_OUTPUTS)
#: Rows of the band's offset table: frames seen 1 … OFFSET_STEPS (the last row also serves longer actions).
OFFSET_STEPS = 201
#: Frames-seen bins (1-based, inclusive) that each get their own calibrated offset.
OFFSET_BINS = ((1, 5), (6, 10), (11, 20), (21, 50), (51, 200), (201, OFFSET_STEPS))


class _Member(nn.Module):
    """One GRU stack with its learned initial state and its MLP."""

    def __init__(self, in_dim: int, hidden_dim: int, layers: int, mlp_dim: int, learn_h0: bool, dropout: float):
        super().__init__()
        self.gru = nn.GRU(in_dim, hidden_dim, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0)
        self.head = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, N_OUTPUTS))
        h0 = torch.zeros(layers, hidden_dim)
        if learn_h0:
            self.h0 = nn.Parameter(h0)
        else:
            self.register_buffer("h0", h0)

    def forward(self, x: Tensor) -> Tensor:
        """The (last layer's) state after every frame, ``(B, T, hidden)``."""
        h0 = self.h0.unsqueeze(1).expand(-1, x.shape[0], -1).contiguous()
        hidden, _ = self.gru(x, h0)
        return hidden


class ProgressHead(nn.Module):
    """members × [GRU(project(norm(embedding)) ⊕ position) → Linear → ReLU → Linear] → mean → sigmoid or clamp.

    Every argument is required: the model is built from a :class:`training.config.TrainConfig`
    (``ProgressHead(input_dim, length_ref, **cfg.model_kwargs())``), whose defaults are the only ones.
    """

    def __init__(
        self,
        input_dim: int,
        length_ref: float,
        *,
        position_encoding: str,
        hidden_dim: int,
        layers: int,
        mlp_dim: int,
        members: int,
        learn_h0: bool,
        output: str,
        input_norm: str,
        dropout: float,
        input_rank: int,
    ):
        super().__init__()
        self.config = {
            "input_dim": input_dim,
            "length_ref": float(length_ref),
            "position_encoding": position_encoding,
            "hidden_dim": hidden_dim,
            "layers": layers,
            "mlp_dim": mlp_dim,
            "members": members,
            "learn_h0": learn_h0,
            "output": output,
            "input_norm": input_norm,
            "dropout": dropout,
            "input_rank": input_rank,
        }
        self.position_encoding = position_encoding
        self.output = output
        self.n_position = 0 if position_encoding == "none" else 1
        self.in_drop = nn.Dropout(dropout)
        # a low-rank input: every member reads the same input_rank projections of the normalised embedding
        self.project = nn.Linear(input_dim, input_rank, bias=False) if input_rank else nn.Identity()
        read = input_rank or input_dim
        self.members = nn.ModuleList(
            _Member(read + self.n_position, hidden_dim, layers, mlp_dim, learn_h0, dropout) for _ in range(members)
        )
        self.register_buffer("length_ref", torch.tensor(float(length_ref)))
        self.register_buffer("input_mean", torch.zeros(input_dim))
        self.register_buffer("input_scale", torch.ones(input_dim))
        # the band: quantile outputs widened (or narrowed) by a calibrated offset per frames-seen bin and side
        # (column 0 moves the low end down, column 1 the high end up)
        self.register_buffer("band_offset", torch.zeros(OFFSET_STEPS, 2))
        # progress shifted by a calibrated offset per frames-seen bin: 0 unless the start or end needed it
        self.register_buffer("progress_offset", torch.zeros(OFFSET_STEPS))

    @property
    def state_dim(self) -> int:
        """Width of the carried state: members × layers × hidden."""
        return self.config["members"] * self.config["layers"] * self.config["hidden_dim"]

    @property
    def streamable(self) -> bool:
        return self.position_encoding != "relative"

    def fit_input_norm(self, frames: Tensor) -> None:
        """Set the per-dimension z-score from training frames ``(N, D)`` (identity if ``input_norm`` is none)."""
        if self.config["input_norm"] == "standardize":
            self.input_mean.copy_(frames.mean(dim=0))
            self.input_scale.copy_(1.0 / frames.std(dim=0).clamp(min=1e-6))

    def position_features(self, step: Tensor) -> Tensor:
        """Feature of 0-based frame index ``step`` (any shape) → ``step.shape + (1,)``."""
        seen = step.to(torch.float32) + 1.0
        if self.position_encoding == "log":
            feat = torch.log1p(seen) / torch.log1p(self.length_ref)
        elif self.position_encoding == "linear":
            feat = seen / self.length_ref
        else:
            raise ValueError(f"{self.position_encoding!r} has no per-frame position feature")
        return feat.unsqueeze(-1)

    def _inputs(self, x: Tensor, lengths: Tensor) -> Tensor:
        x = self.project(self.in_drop((x - self.input_mean) * self.input_scale))
        if self.position_encoding == "none":
            return x
        idx = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        if self.position_encoding == "relative":
            pos = (idx.to(torch.float32) / lengths.clamp(min=1).unsqueeze(1).to(torch.float32)).unsqueeze(-1)
        else:
            pos = self.position_features(idx)
        return torch.cat([x, pos], dim=-1)

    def member_states(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Every member's GRU state after every frame, ``(members, B, T, hidden)``."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        inputs = self._inputs(x, lengths)
        return torch.stack([m(inputs) for m in self.members])

    def readout(self, states: Tensor) -> Tensor:
        """Every member's pre-activation outputs from its :meth:`member_states`, ``(members, B, T, N_OUTPUTS)``."""
        return torch.stack([m.head(s) for m, s in zip(self.members, states, strict=True)])

    def member_outputs(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """:meth:`readout` of :meth:`member_states`; training losses use these."""
        return self.readout(self.member_states(x, lengths))

    def activate(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw) if self.output == "sigmoid" else raw.clamp(0.0, 1.0)

    @staticmethod
    def offset_rows(step: Tensor) -> Tensor:
        """The offset tables' row for each 0-based ``step``: the last row serves every later frame."""
        return step.clamp(max=OFFSET_STEPS - 1)

    def _frame_rows(self, x: Tensor) -> Tensor:
        """:meth:`offset_rows` of every frame of ``x`` ``(B, T, D)``."""
        return self.offset_rows(torch.arange(x.shape[1], device=x.device)).expand(x.shape[0], -1)

    def band(self, progress: Tensor, quantiles: Tensor, rows: Tensor) -> Tensor:
        """``(..., 2)`` interval from the activated quantiles ``(..., 2)``, each end moved out by its side's
        offset at ``rows`` (:meth:`offset_rows`).

        It always holds ``progress`` and lies in [0, 1]; calibration (:mod:`training.calibration`) sets
        ``band_offset`` so that the stated share of validation frames fall inside.
        """
        offset = self.band_offset[rows]
        lo = torch.minimum(quantiles[..., 0] - offset[..., 0], progress).clamp(0.0, 1.0)
        hi = torch.maximum(quantiles[..., 1] + offset[..., 1], progress).clamp(0.0, 1.0)
        return torch.stack([lo, hi], dim=-1)

    def shifted(self, progress: Tensor, rows: Tensor) -> Tensor:
        """``progress`` moved by the offset of ``rows`` (:meth:`offset_rows`) and kept in [0, 1]: calibration
        (:func:`training.calibration.edge_offsets`) sets ``progress_offset`` where the head's start or end
        is biased on validation videos."""
        return (progress + self.progress_offset[rows]).clamp(0.0, 1.0)

    def answer(self, x: Tensor, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Progress ``(B, T)`` and the quantiles ``(B, T, 2)`` at every frame, before the band's offset."""
        out = self.activate(self.member_outputs(x, lengths).mean(dim=0))
        return self.shifted(out[..., PROGRESS], self._frame_rows(x)), out[..., LOWER : UPPER + 1]

    def forward(self, x: Tensor, lengths: Tensor | None = None, dense: bool = False) -> tuple[Tensor, Tensor]:
        """Progress and band at every frame ``(B, T)``, ``(B, T, 2)`` if ``dense``, else at each sequence's last
        frame ``(B,)``, ``(B, 2)``."""
        progress, quantiles = self.answer(x, lengths)
        band = self.band(progress, quantiles, self._frame_rows(x))
        if dense:
            return progress, band
        last = (lengths - 1) if lengths is not None else torch.full((x.shape[0],), x.shape[1] - 1)
        rows = torch.arange(x.shape[0], device=x.device)
        last = last.to(x.device)
        return progress[rows, last], band[rows, last]

    def _stacked(self, name: str) -> Tensor:
        """One parameter of every member stacked on a leading members axis (constants in the exported graph)."""
        return torch.stack([member.get_parameter(name) for member in self.members])

    def step(self, embedding: Tensor, step: Tensor, state: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One frame per row: ``(B, D)``, 0-based ``step`` ``(B,)``, ``state`` ``(B, state_dim)`` →
        progress ``(B,)``, the next state and the band ``(B, 2)``.

        Rows with ``step == 0`` start from the learned initial states and ignore ``state``. The GRU
        equations by hand, every member at once (batched matrix products over a members axis), so the
        cell's operator count does not grow with the ensemble. ``state`` is laid out member-major,
        then layer, then unit.
        """
        if not self.streamable:
            raise ValueError("the relative encoding depends on the prefix length: it cannot run step by step")
        x = self.project((embedding - self.input_mean) * self.input_scale)
        if self.position_encoding != "none":
            x = torch.cat([x, self.position_features(step)], dim=-1)
        members, layers, hidden = len(self.members), self.config["layers"], self.config["hidden_dim"]
        h0 = torch.stack([member.h0 for member in self.members]).reshape(1, -1)
        h_all = torch.where((step == 0).unsqueeze(-1), h0.expand_as(state), state)
        h_all = h_all.reshape(-1, members, layers, hidden).permute(2, 1, 0, 3)  # (layers, members, B, H)
        inp = x.unsqueeze(0)  # (1, B, in): every member reads the same first-layer input
        nexts = []
        for k in range(layers):
            gi = (
                inp @ self._stacked(f"gru.weight_ih_l{k}").transpose(1, 2) + self._stacked(f"gru.bias_ih_l{k}")[:, None]
            )
            gh = h_all[k] @ self._stacked(f"gru.weight_hh_l{k}").transpose(1, 2)
            gh = gh + self._stacked(f"gru.bias_hh_l{k}")[:, None]
            i_r, i_z, i_n = gi.chunk(3, dim=-1)
            h_r, h_z, h_n = gh.chunk(3, dim=-1)
            r = torch.sigmoid(i_r + h_r)
            z = torch.sigmoid(i_z + h_z)
            n = torch.tanh(i_n + r * h_n)
            inp = (1.0 - z) * n + z * h_all[k]  # (members, B, H)
            nexts.append(inp)
        hid = torch.relu(inp @ self._stacked("head.0.weight").transpose(1, 2) + self._stacked("head.0.bias")[:, None])
        out = hid @ self._stacked("head.2.weight").transpose(1, 2) + self._stacked("head.2.bias")[:, None]
        next_state = torch.stack(nexts).permute(2, 1, 0, 3).reshape(-1, self.state_dim)
        out = self.activate(out.mean(dim=0))
        rows = self.offset_rows(step)  # one lookup row for both offset tables
        progress = self.shifted(out[:, PROGRESS], rows)
        return progress, next_state, self.band(progress, out[:, LOWER : UPPER + 1], rows)
