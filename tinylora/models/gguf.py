"""GGUF files: metadata, tensors (dequantised with NumPy), and the tokenizer they carry.

GGUF (llama.cpp's format) stores one model in one file: key/value metadata (sizes, RoPE
base, the tokenizer's vocabulary and merges, a chat template) and tensors, most of them
quantised in blocks. In Q4_1 each block of 32 weights is 20 bytes: a float16 scale d, a
float16 minimum m and 32 four-bit codes q, with w = d * q + m (5 bits per weight).
Reading uses the `gguf` package (gguf.GGUFReader, gguf.quants.dequantize).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import pretrained


@dataclass
class TensorInfo:
    """One tensor of a GGUF file: its name, NumPy shape (rows first), type and size in the file."""

    name: str
    shape: tuple  # NumPy order: (out, in) for a weight matrix
    qtype: str  # "F32", "Q4_1", "Q8_0", ...
    n_bytes: int

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


class GGUFFile:
    """A GGUF file opened for reading (memory-mapped): .metadata, .tensors, dequantize(name)."""

    def __init__(self, path):
        gguf = pretrained.require("gguf")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"GGUF file {str(self.path)!r} does not exist")
        try:
            self._reader = gguf.GGUFReader(str(self.path))
        except Exception as e:  # ValueError, struct errors: a truncated or foreign file
            raise ValueError(f"{str(self.path)!r} is not a readable GGUF file: {e}") from None
        self._gguf = gguf
        self.metadata = {name: _field_value(f, gguf) for name, f in self._reader.fields.items()}
        self._tensors = {t.name: t for t in self._reader.tensors}
        self.tensors = {
            t.name: TensorInfo(
                t.name, tuple(int(n) for n in reversed(t.shape.tolist())), t.tensor_type.name, int(t.n_bytes)
            )
            for t in self._reader.tensors
        }

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def raw(self, name: str) -> np.ndarray:
        """The tensor as stored (quantised blocks as uint8 rows), copied out of the file."""
        return np.array(self._tensor(name).data)

    def dequantize(self, name: str, dtype=np.float32) -> np.ndarray:
        """The tensor as a float array in NumPy order (a weight matrix is (out, in))."""
        t = self._tensor(name)
        arr = np.asarray(self._gguf.quants.dequantize(t.data, t.tensor_type))
        if np.may_share_memory(arr, t.data):  # float tensors come back as views of the mapped file
            arr = arr.copy()
        return arr.reshape(self.tensors[name].shape).astype(dtype, copy=False)

    def _tensor(self, name: str):
        if name not in self._tensors:
            raise KeyError(f"{self.path.name} has no tensor {name!r} (it has {len(self._tensors)} tensors)")
        return self._tensors[name]

    def memory(self, names=None) -> dict:
        """Bytes of the tensors as stored in the file (quantised) and as float32, by type."""
        names = list(self.tensors) if names is None else list(names)
        by_type: dict = {}
        for n in names:
            info = self.tensors[n]
            entry = by_type.setdefault(info.qtype, {"tensors": 0, "elements": 0, "bytes": 0})
            entry["tensors"] += 1
            entry["elements"] += info.n_elements
            entry["bytes"] += info.n_bytes
        elements = sum(e["elements"] for e in by_type.values())
        stored = sum(e["bytes"] for e in by_type.values())
        return {
            "parameters": elements,
            "quantized_bytes": stored,
            "float32_bytes": 4 * elements,
            "bits_per_weight": 8 * stored / max(elements, 1),
            "by_type": by_type,
        }

    def get(self, key: str, default=None):
        return self.metadata.get(key, default)

    def require_key(self, key: str):
        if key not in self.metadata:
            raise KeyError(f"{self.path.name}: metadata key {key!r} is missing")
        return self.metadata[key]


def _field_value(field, gguf):
    """A metadata value as Python: str, int/float/bool, list of str, or a NumPy array."""
    T = gguf.GGUFValueType
    kind = field.types[0] if field.types else None
    if kind == T.STRING:
        return bytes(field.parts[field.data[0]]).decode("utf-8", errors="replace")
    if kind == T.ARRAY:
        inner = field.types[1] if len(field.types) > 1 else None
        if inner == T.STRING:
            return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
        if not field.data:
            return np.zeros(0)
        return np.concatenate([np.asarray(field.parts[i]).reshape(-1) for i in field.data])
    value = field.parts[field.data[0]][0]
    return value.item() if hasattr(value, "item") else value


# ---- tokenizer ------------------------------------------------------------------------------------

TOKEN_NORMAL, TOKEN_CONTROL, TOKEN_USER_DEFINED = 1, 3, 4
# llama.cpp's names for the pre-tokenizer (tokenizer.ggml.pre) -> split digits one by one first?
PRE_TOKENIZERS = {"gpt2": False, "smollm": True, "starcoder": True, "refact": True, "codeshell": True}


class BPETokenizer:
    """A byte-level BPE tokenizer (GPT-2 style) built from a GGUF's vocabulary and merges.

    encode(text) -> ids, decode(ids) -> text; special tokens such as <|im_start|> are matched
    whole in the text and never split; chat(messages) renders the model's ChatML template.
    """

    def __init__(self, tk, special_tokens: dict, bos_id=None, eos_id=None, pad_id=None, chat_template=None):
        self.tk = tk
        self.special_tokens = special_tokens  # {text: id}
        self.bos_id, self.eos_id, self.pad_id = bos_id, eos_id, pad_id
        self.chat_template = chat_template
        self.default_system = _default_system(chat_template)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list:
        """Token ids of `text` (no BOS is added: SmolLM2's file says add_bos_token = False)."""
        return self.tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str):
        return self.tk.token_to_id(token)

    def id_to_token(self, i: int):
        return self.tk.id_to_token(int(i))

    def chat(self, messages, add_generation_prompt: bool = True, default_system: bool = True) -> str:
        """The prompt text of a conversation (a string is one user message), in ChatML.

        This is what the file's Jinja template renders: a default system message when the
        conversation has none (default_system=False leaves it out: shorter prompts), then
        <|im_start|>{role}\\n{content}<|im_end|>\\n per message, then <|im_start|>assistant\\n.
        """
        if isinstance(messages, str):
            messages = [{"role": "user", "content": messages}]
        if self.chat_template is not None and "<|im_start|>" not in self.chat_template:
            raise NotImplementedError("BPETokenizer.chat: only ChatML templates (<|im_start|>) are supported")
        parts = []
        has_system = bool(messages) and messages[0]["role"] == "system"
        if default_system and self.default_system is not None and not has_system:
            parts.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        parts += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        if add_generation_prompt:
            parts.append("<|im_start|>assistant\n")
        return "".join(parts)

    def encode_chat(self, messages, add_generation_prompt: bool = True, default_system: bool = True) -> list:
        """Token ids of chat(messages)."""
        return self.encode(self.chat(messages, add_generation_prompt, default_system))


def _default_system(template):
    """The system message a ChatML template inserts when the conversation has none (or None)."""
    if not template:
        return None
    m = re.search(r"<\|im_start\|>system\n(.*?)<\|im_end\|>", template, flags=re.DOTALL)
    return m.group(1) if m else None


def build_tokenizer(meta: dict) -> BPETokenizer:
    """A byte-level BPE tokenizer from GGUF metadata (tokenizer.ggml.tokens / merges / token_type).

    Vocabulary and merges go into tokenizers' BPE model as they are (they are already in
    GPT-2's byte-to-unicode alphabet, "Ġ" for a space); the pre-tokenizer is GPT-2's regex
    (ByteLevel), preceded for SmolLM ("smollm") by splitting every digit on its own; control
    tokens (type 3) become special tokens, matched whole and never merged across.
    """
    tokenizers = pretrained.require("tokenizers")
    model = meta.get("tokenizer.ggml.model")
    if model != "gpt2":
        raise NotImplementedError(
            f"build_tokenizer: only byte-level BPE ('gpt2') is supported, the file has {model!r}"
        )
    pre = meta.get("tokenizer.ggml.pre", "gpt2")
    if pre not in PRE_TOKENIZERS:
        raise NotImplementedError(
            f"build_tokenizer: pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)})"
        )
    tokens = meta["tokenizer.ggml.tokens"]
    types = np.asarray(meta.get("tokenizer.ggml.token_type", np.ones(len(tokens))), dtype=np.int64)
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    tk = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges))
    byte_level = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if PRE_TOKENIZERS[pre]:
        digits = tokenizers.pre_tokenizers.Digits(individual_digits=True)
        tk.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([digits, byte_level])
    else:
        tk.pre_tokenizer = byte_level
    tk.decoder = tokenizers.decoders.ByteLevel()
    special = {tokens[i]: i for i in np.flatnonzero((types == TOKEN_CONTROL) | (types == TOKEN_USER_DEFINED))}
    tk.add_special_tokens(
        [tokenizers.AddedToken(t, special=True, normalized=False) for t in sorted(special, key=special.get)]
    )
    return BPETokenizer(
        tk,
        special,
        bos_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_id=meta.get("tokenizer.ggml.eos_token_id"),
        pad_id=meta.get("tokenizer.ggml.padding_token_id"),
        chat_template=meta.get("tokenizer.chat_template"),
    )
