"""Models built from tinylora.nn: an MLP, a GPT, and loaders for real pretrained models."""

from .gpt import GPT, GPTConfig
from .mlp import MLP

__all__ = ["MLP", "GPT", "GPTConfig"]
