"""A multi-layer perceptron: Linear layers fc1..fcN with an activation between them."""

from __future__ import annotations

from .. import functional as F
from ..nn import Linear, Module

ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "tanh": F.tanh, "silu": F.silu}


class MLP(Module):
    """MLP([64, 128, 128, 10]) maps 64 inputs to 10 logits through two hidden layers of 128."""

    def __init__(self, sizes, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2:
            raise ValueError(f"MLP: sizes needs at least an input and an output size, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"MLP: activation must be one of {', '.join(ACTIVATIONS)}, got {activation!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"MLP: dropout must be in [0, 1), got {dropout}")
        self.sizes, self.activation, self.dropout = sizes, activation, dropout
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:]), start=1):
            setattr(self, f"fc{i}", Linear(n_in, n_out))

    def forward(self, x):
        act = ACTIVATIONS[self.activation]
        layers = list(self.children())
        for i, layer in enumerate(layers):
            x = layer(x)  # (B, sizes[i]) -> (B, sizes[i + 1])
            if i < len(layers) - 1:
                x = act(x)
                if self.dropout:
                    x = F.dropout(x, self.dropout, self.training)
        return x  # (B, n_classes) logits

    def extra_repr(self) -> str:
        drop = f", dropout={self.dropout}" if self.dropout else ""
        return f"sizes={self.sizes}, activation={self.activation!r}{drop}"
