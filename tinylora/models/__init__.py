"""Models built from tinylora.nn: an MLP, a GPT, and loaders for real pretrained models."""

from .gguf import BPETokenizer, GGUFFile, build_tokenizer
from .gpt import GPT, GPTConfig
from .llama import KVCache, Llama, LlamaConfig, QuantizedLinear, SmolLM2
from .minilm import BertConfig, MiniLM, WordPieceTokenizer, cosine_similarity, mean_pool
from .mlp import MLP
from .pretrained import MissingDependencyError, ModelNotInstalledError

__all__ = [
    "MLP", "GPT", "GPTConfig",
    "MiniLM", "BertConfig", "WordPieceTokenizer", "mean_pool", "cosine_similarity",
    "Llama", "LlamaConfig", "SmolLM2", "KVCache", "QuantizedLinear",
    "GGUFFile", "BPETokenizer", "build_tokenizer", "ModelNotInstalledError", "MissingDependencyError",
]  # fmt: skip
