"""Datasets for the course: 8x8 digits (MLP chapters) and Shakespeare's plays (transformer chapters)."""

from .digits import Digits, load_digits, rotate_images
from .shakespeare import (
    GENRES,
    CharTokenizer,
    Shakespeare,
    WindowSampler,
    convert_play,
    corpus_tokenizer,
    list_plays,
    load_play,
    load_shakespeare,
    load_text,
    plays_dir,
    train_val_split,
)

__all__ = [
    "Digits",
    "load_digits",
    "rotate_images",
    "GENRES",
    "plays_dir",
    "list_plays",
    "load_play",
    "convert_play",
    "load_text",
    "CharTokenizer",
    "corpus_tokenizer",
    "train_val_split",
    "WindowSampler",
    "Shakespeare",
    "load_shakespeare",
]
