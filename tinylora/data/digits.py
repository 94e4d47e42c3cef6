"""The 8x8 handwritten digits of scikit-learn, upright or rotated by 90 degrees (a shifted task)."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

INSTALL_HINT = 'pip install "tinylora[course]"'


@dataclass
class Digits:
    """A train/test split of the digits: x is (N, 64) float32 in [0, 1], y is (N,) int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str = "digits"
    n_classes: int = 10

    def __repr__(self) -> str:
        return f"Digits(name={self.name!r}, train={len(self.y_train)}, test={len(self.y_test)})"


def rotate_images(x, k: int = 1) -> np.ndarray:
    """Rotate each flattened 8x8 image of x (N, 64) by k * 90 degrees counter-clockwise."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != 64:
        raise ValueError(f"rotate_images: expected flattened 8x8 images of shape (N, 64), got {x.shape}")
    return np.rot90(x.reshape(-1, 8, 8), k=k, axes=(1, 2)).reshape(len(x), 64).copy()


def _stratified_split(y: np.ndarray, test_fraction: float, seed: int):
    """Seeded split that puts round(test_fraction * n) of each class in the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def load_digits(rotate: bool = False, test_fraction: float = 0.25, seed: int = 0) -> Digits:
    """The 1797 scikit-learn digits split (stratified, seeded); rotate=True turns every image 90 degrees."""
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"load_digits: test_fraction must be between 0 and 1, got {test_fraction}")
    if importlib.util.find_spec("sklearn") is None:
        raise ImportError(f"load_digits needs scikit-learn, which is not installed: {INSTALL_HINT}")
    from sklearn.datasets import load_digits as sklearn_digits  # lazy: optional, and slow to import

    raw = sklearn_digits()
    x = np.asarray(raw.data, dtype=np.float32) / np.float32(16)  # pixels 0..16 -> [0, 1]
    y = np.asarray(raw.target, dtype=np.int64)
    if rotate:
        x = rotate_images(x)
    train, test = _stratified_split(y, test_fraction, seed)
    name = "digits-rotated" if rotate else "digits"
    return Digits(x[train], y[train], x[test], y[test], name=name)
