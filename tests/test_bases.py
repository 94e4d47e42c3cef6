"""The shipped pretrained bases: they load, match their cards, and their metrics reproduce."""

import hashlib
import json

import numpy as np
import pytest

from tinylora import bases
from tinylora.data import load_digits, load_shakespeare
from tinylora.train import evaluate_classifier, evaluate_lm


@pytest.mark.parametrize("name", bases.NAMES)
def test_card_describes_the_file(name):
    weights, card_path = bases._paths(name)
    card = json.loads(card_path.read_text())
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == card["sha256"]
    assert weights.stat().st_size == card["file_bytes"] < 15 * 2**20
    for key in (
        "config",
        "data",
        "recipe",
        "metrics",
        "parameters",
        "training_seconds",
        "machine",
        "command",
    ):
        assert key in card, key
    base = bases.load_base(name)
    assert sum(p.size for p in base.model.parameters()) == card["parameters"]


def test_digits_base_reproduces_its_recorded_accuracy():
    base = bases.load_base("digits")
    card = base.card
    upright, rotated = load_digits(), load_digits(rotate=True)
    test = evaluate_classifier(base.model, upright.x_test, upright.y_test)
    assert test["accuracy"] == pytest.approx(card["metrics"]["test"]["accuracy"], abs=1e-9)
    assert test["accuracy"] >= 0.97  # the bar for the upright base
    assert test["loss"] == pytest.approx(card["metrics"]["test"]["loss"], rel=1e-4)
    shifted = evaluate_classifier(base.model, rotated.x_test, rotated.y_test)
    assert shifted["accuracy"] == pytest.approx(card["metrics"]["rotated_test"]["accuracy"], abs=1e-9)
    assert shifted["accuracy"] < 0.3  # the rotated task really is a new task for this base


def test_shakespeare_base_reproduces_its_held_out_loss_and_beats_unigram():
    base = bases.load_base("shakespeare")
    card, cfg = base.card, base.model.config
    r = card["recipe"]
    data = load_shakespeare(tuple(r["genres"]), tokenizer=base.tokenizer)
    assert len(data.val) == card["data"]["val_chars"]
    val = evaluate_lm(
        base.model, data.val, cfg.block_size, batch_size=r["batch_size"], batches=r["eval_batches"]
    )
    assert val["loss"] == pytest.approx(card["metrics"]["val_loss"], rel=1e-4)
    assert val["loss"] < card["metrics"]["unigram_val_loss"] - 1.0  # clearly below a unigram model
    assert "comedies" not in card["data"]["genres"] and card["data"]["held_out_genre"] == "comedies"


def test_shakespeare_base_writes_play_like_text():
    base = bases.load_base("shakespeare")
    tok = base.tokenizer
    text = tok.decode(base.model.generate(tok.encode("HAMLET:\n"), 300, temperature=0.8, top_k=20, seed=0)[0])
    lines = [ln for ln in text.splitlines() if ln.strip()]
    speakers = [ln for ln in lines if ln.endswith(":") and ln[:-1].replace(" ", "").isupper()]
    assert len(speakers) >= 2  # speeches start with a NAME: line, as in the plays
    words = [w.strip(".,;:!?'").lower() for w in text.split()]
    common = {"the", "and", "i", "to", "of", "you", "my", "a", "that", "is", "in", "not", "me", "it", "with"}
    assert sum(w in common for w in words) / max(len(words), 1) > 0.15  # mostly real English words


def test_the_tokenizer_is_saved_with_the_model():
    base = bases.load_base("shakespeare")
    assert base.tokenizer.vocab_size == base.model.config.vocab_size
    assert (
        base.tokenizer.decode(base.tokenizer.encode("ROMEO:\nO, she doth teach"))
        == "ROMEO:\nO, she doth teach"
    )


def test_a_tampered_base_is_refused(tmp_path):
    weights, card = bases._paths("digits")
    (tmp_path / weights.name).write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    (tmp_path / card.name).write_text(card.read_text())
    with pytest.raises(ValueError, match="does not match its card"):
        bases.load_base("digits", tmp_path)
    with pytest.raises(ValueError, match="unknown base 'cifar'"):
        bases.load_base("cifar")


def test_load_base_gives_independent_copies():
    a, b = bases.load_base("digits"), bases.load_base("digits")
    a.model.fc1.weight.data += 1
    assert not np.array_equal(a.model.fc1.weight.numpy(), b.model.fc1.weight.numpy())


def test_pretrain_needs_a_folder_and_checks_it_before_training(tmp_path, monkeypatch):
    from tinylora.io import WriteError

    monkeypatch.setattr(bases, "train", lambda *a, **k: pytest.fail("trained before checking the folder"))
    with pytest.raises(ValueError, match="pass bases.ASSETS to replace the shipped base on purpose"):
        bases.pretrain("digits", None)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(WriteError, match=f"could not write {blocker / 'base'}"):
        bases.pretrain("shakespeare", blocker / "base", steps=1, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
