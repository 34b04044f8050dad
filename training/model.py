"""The ProgressHead: a GRU over embeddings plus a position feature, a small MLP on top.

The position feature is computed here and only here; the exported ONNX cell traces
:meth:`ProgressHead.step`, so the service gets it through the graph.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

#: ``relative``: the proposal's ``arange(T)/T`` over the prefix seen so far (cannot stream).
#: ``none``: no position feature (the original head). ``log``/``linear``: a feature of the
#: frame index alone, ``log1p(i+1)/log1p(L_ref)`` or ``(i+1)/L_ref`` (streamable).
ENCODINGS = ("log", "linear", "relative", "none")
OUTPUTS = ("sigmoid", "clamp")


class ProgressHead(nn.Module):
    """GRU(embedding ⊕ position) → Linear → ReLU → Linear → sigmoid (or a clamp to [0, 1])."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int = 64,
        position_encoding: str = "log",
        learn_h0: bool = True,
        mlp_dim: int = 32,
        output: str = "sigmoid",
        length_ref: float = 10.0,
    ):
        super().__init__()
        if position_encoding not in ENCODINGS:
            raise ValueError(f"position_encoding must be one of {ENCODINGS}, not {position_encoding!r}")
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}, not {output!r}")
        self.config = {
            "input_dim": input_dim,
            "hidden_dim": hidden_dim,
            "position_encoding": position_encoding,
            "learn_h0": learn_h0,
            "mlp_dim": mlp_dim,
            "output": output,
            "length_ref": float(length_ref),
        }
        self.position_encoding = position_encoding
        self.output = output
        self.n_position = 0 if position_encoding == "none" else 1
        self.gru = nn.GRU(input_dim + self.n_position, hidden_dim, batch_first=True)
        self.head = nn.Sequential(nn.Linear(hidden_dim, mlp_dim), nn.ReLU(), nn.Linear(mlp_dim, 1))
        h0 = torch.zeros(hidden_dim)
        if learn_h0:
            self.h0 = nn.Parameter(h0)
        else:
            self.register_buffer("h0", h0)
        self.register_buffer("length_ref", torch.tensor(float(length_ref)))

    @property
    def streamable(self) -> bool:
        return self.position_encoding != "relative"

    def position_features(self, step: Tensor) -> Tensor:
        """Feature of 0-based frame index ``step`` (any shape) → ``step.shape + (n_position,)``."""
        seen = step.to(torch.float32) + 1.0
        if self.position_encoding == "log":
            feat = torch.log1p(seen) / torch.log1p(self.length_ref)
        elif self.position_encoding == "linear":
            feat = seen / self.length_ref
        else:
            raise ValueError(f"{self.position_encoding!r} has no per-frame position feature")
        return feat.unsqueeze(-1)

    def _inputs(self, x: Tensor, lengths: Tensor) -> Tensor:
        if self.position_encoding == "none":
            return x
        idx = torch.arange(x.shape[1], device=x.device).expand(x.shape[0], -1)
        if self.position_encoding == "relative":
            pos = (idx.to(torch.float32) / lengths.clamp(min=1).unsqueeze(1).to(torch.float32)).unsqueeze(-1)
        else:
            pos = self.position_features(idx)
        return torch.cat([x, pos], dim=-1)

    def raw(self, x: Tensor, lengths: Tensor | None = None) -> Tensor:
        """Pre-activation output at every frame, ``(B, T)``; ``lengths`` marks padding (relative needs it)."""
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], dtype=torch.long, device=x.device)
        h0 = self.h0.expand(1, x.shape[0], -1).contiguous()
        hidden, _ = self.gru(self._inputs(x, lengths), h0)
        return self.head(hidden).squeeze(-1)

    def activate(self, raw: Tensor) -> Tensor:
        return torch.sigmoid(raw) if self.output == "sigmoid" else raw.clamp(0.0, 1.0)

    def forward(self, x: Tensor, lengths: Tensor | None = None, dense: bool = False) -> Tensor:
        """Progress at every frame ``(B, T)`` if ``dense``, else at each sequence's last frame ``(B,)``."""
        out = self.activate(self.raw(x, lengths))
        if dense:
            return out
        last = (lengths - 1) if lengths is not None else torch.full((x.shape[0],), x.shape[1] - 1)
        return out.gather(1, last.view(-1, 1).to(out.device)).squeeze(1)

    def step(self, embedding: Tensor, step: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        """One frame per row: ``(B, D)``, 0-based ``step`` ``(B,)``, ``state`` ``(B, H)``.

        Rows with ``step == 0`` start from the learned ``h0`` and ignore ``state``.
        """
        if not self.streamable:
            raise ValueError("the relative encoding depends on the prefix length: it cannot run step by step")
        h = torch.where((step == 0).unsqueeze(-1), self.h0.expand_as(state), state)
        x = (
            embedding
            if self.position_encoding == "none"
            else torch.cat([embedding, self.position_features(step)], dim=-1)
        )
        gi = x @ self.gru.weight_ih_l0.T + self.gru.bias_ih_l0
        gh = h @ self.gru.weight_hh_l0.T + self.gru.bias_hh_l0
        i_r, i_z, i_n = gi.chunk(3, dim=-1)
        h_r, h_z, h_n = gh.chunk(3, dim=-1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
        next_state = (1.0 - z) * n + z * h
        return self.activate(self.head(next_state).squeeze(-1)), next_state


def load_checkpoint(path: str, map_location: str = "cpu") -> tuple[ProgressHead, dict[str, Any]]:
    """Rebuild a head from ``best.pt``; returns it (eval mode) and the whole checkpoint dict."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model = ProgressHead(**ckpt["model_config"])
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt
