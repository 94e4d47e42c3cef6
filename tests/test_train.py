"""The training loop: history rows, evaluation cadence, determinism, divergence, progress, and
the evaluation helpers against direct computation."""

import math
import re

import numpy as np
import pytest

import tinylora as tl
import tinylora.functional as F
from tinylora import models, optim
from tinylora.data import load_digits
from tinylora.train import History, evaluate_classifier, evaluate_lm, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def batch_source(d, batch=64, seed=0):
    r = np.random.default_rng(seed)

    def next_batch():
        idx = r.integers(0, len(d.y_train), batch)
        return d.x_train[idx], d.y_train[idx]

    return next_batch


def digits_run(d, steps=30, eval_every=10, seed=0, dropout=False, progress=False, **kw):
    tl.manual_seed(seed)
    model = models.MLP([64, 32, 10])
    if dropout:  # a model whose forward draws random numbers
        from tinylora import nn

        model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))
    opt = optim.Adam(model, lr=1e-2)
    history = train(
        model,
        opt,
        batch_source(d, seed=seed),
        steps,
        eval_every=eval_every,
        eval_fn=lambda m: evaluate_classifier(m, d.x_test, d.y_test),
        progress=progress,
        seed=seed,
        **kw,
    )
    return model, history


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_history_rows_and_eval_cadence(digits):
    model, h = digits_run(digits, steps=25, eval_every=10)
    assert isinstance(h, History)
    assert [r["step"] for r in h.rows] == [10, 20, 25]  # every eval_every steps and after the last
    for r in h.rows:
        assert set(r) == {"step", "train_loss", "eval_loss", "eval_accuracy", "seconds", "lr"}
        assert r["lr"] == 1e-2
        assert all(isinstance(r[k], float) for k in ("train_loss", "eval_loss", "eval_accuracy", "seconds"))
    seconds = h.column("seconds")
    assert seconds[0] > 0 and seconds == sorted(seconds)
    # every step's loss is kept, and each row's train_loss is the mean since the previous row
    assert [s for s, _ in h.train_losses] == list(range(1, 26))
    losses = [v for _, v in h.train_losses]
    assert h.rows[0]["train_loss"] == pytest.approx(np.mean(losses[:10]))
    assert h.rows[1]["train_loss"] == pytest.approx(np.mean(losses[10:20]))
    assert h.rows[2]["train_loss"] == pytest.approx(np.mean(losses[20:25]))
    # it learned something, and the eval numbers are those of the final model
    assert losses[-1] < losses[0] and h.final["eval_accuracy"] > 0.5
    direct = evaluate_classifier(model, digits.x_test, digits.y_test)
    assert h.final["eval_loss"] == pytest.approx(direct["loss"], rel=1e-6)
    assert h.final["eval_accuracy"] == direct["accuracy"]
    assert h.final is h.rows[-1]
    assert h.column("step") == [10, 20, 25] and h.column("nope") == [None, None, None]
    assert h.to_dict() == {"rows": h.rows, "train_losses": h.train_losses}
    assert model.training  # back in training mode


def test_eval_every_divides_steps(digits):
    _, h = digits_run(digits, steps=20, eval_every=5)
    assert h.column("step") == [5, 10, 15, 20]
    _, h = digits_run(digits, steps=7, eval_every=100)
    assert h.column("step") == [7]


def test_rows_without_eval_fn(digits):
    tl.manual_seed(0)
    model = models.MLP([64, 10])
    h = train(model, optim.SGD(model, lr=0.1), batch_source(digits), 6, eval_every=3, progress=False)
    assert h.column("step") == [3, 6]
    assert set(h.rows[0]) == {"step", "train_loss", "seconds", "lr"}


def test_training_is_deterministic_under_a_seed(digits):
    _, a = digits_run(digits, steps=30, seed=0, dropout=True)
    _, b = digits_run(digits, steps=30, seed=0, dropout=True)
    _, c = digits_run(digits, steps=30, seed=1, dropout=True)
    assert a.train_losses == b.train_losses
    assert without_seconds(a.rows) == without_seconds(b.rows)
    assert a.train_losses != c.train_losses


def test_seed_resets_the_dropout_stream(digits):
    """Same model, same batches: the loop's seed alone fixes the dropout masks."""
    from tinylora import nn

    def run(seed):
        tl.manual_seed(123)
        model = nn.Sequential(nn.Linear(64, 32), nn.Dropout(0.5), nn.Linear(32, 10))
        opt = optim.SGD(model, lr=0.1)
        tl.manual_seed(999)  # whatever happened before the loop does not matter
        return train(model, opt, batch_source(digits), 5, seed=seed, progress=False).train_losses

    assert run(0) == run(0)
    assert run(0) != run(1)


def test_evaluation_runs_in_eval_mode_without_grad(digits):
    seen = []

    def eval_fn(m):
        seen.append((m.training, tl.is_grad_enabled(), all(x.training for x in m.modules())))
        return {"accuracy": 1, "custom": 2.5}

    tl.manual_seed(0)
    model = models.MLP([64, 10])
    h = train(
        model,
        optim.SGD(model, lr=0.1),
        batch_source(digits),
        4,
        eval_fn=eval_fn,
        eval_every=2,
        progress=False,
    )
    assert seen == [(False, False, False), (False, False, False)]
    assert h.final["eval_accuracy"] == 1.0 and h.final["eval_custom"] == 2.5
    assert model.training and tl.is_grad_enabled()


def test_batches_may_be_an_iterable(digits):
    r = np.random.default_rng(0)
    pairs = []
    for _ in range(4):
        idx = r.integers(0, len(digits.y_train), 16)
        pairs.append((digits.x_train[idx], digits.y_train[idx]))
    tl.manual_seed(0)
    model = models.MLP([64, 10])
    h = train(model, optim.SGD(model, lr=0.1), pairs, 4, progress=False)
    # the first loss is the loss of the untrained model on the first batch
    tl.manual_seed(0)
    fresh = models.MLP([64, 10])
    expected = F.cross_entropy(fresh(tl.Tensor(pairs[0][0])), pairs[0][1]).item()
    assert h.train_losses[0][1] == pytest.approx(expected, rel=1e-6)
    assert len(h.train_losses) == 4
    with pytest.raises(ValueError, match="batches ran out at step 5 of 5: only 4 batches were given"):
        train(model, optim.SGD(model, lr=0.1), pairs, 5, progress=False)
    with pytest.raises(ValueError, match="ran out at step 1 of 2: only 0 batches"):
        train(model, optim.SGD(model, lr=0.1), iter(()), 2, progress=False)


def test_a_batch_that_is_not_a_pair_is_refused_naming_the_step(digits):
    model = models.MLP([64, 10])
    x = digits.x_train[:4]
    with pytest.raises(ValueError, match="step 1: a batch must be an \\(x, y\\) pair, got ndarray"):
        train(model, optim.SGD(model, lr=0.1), lambda: x, 2, progress=False)
    with pytest.raises(TypeError, match="batches must be a callable or an iterable .* got int"):
        train(model, optim.SGD(model, lr=0.1), 3, 2, progress=False)


def test_a_non_finite_gradient_stops_training_before_the_update(digits):
    """A finite loss whose gradient is NaN (sqrt at 0): the model keeps the weights of step 2."""
    calls, snapshot = [], {}

    def loss_fn(model, x, y):
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        if len(calls) == 3:
            snapshot.update({k: v.copy() for k, v in model.state_dict().items()})
            w = model.fc1.weight
            return loss + ((w - w) ** 2).sum().sqrt()  # adds 0 to the loss, NaN to the gradient
        return loss

    tl.manual_seed(0)
    model = models.MLP([64, 10])
    opt = optim.Adam(model, lr=0.1)
    with pytest.raises(FloatingPointError, match="diverged at step 3: 1 of 2 gradients hold NaN") as info:
        with np.errstate(all="ignore"):
            train(model, opt, batch_source(digits), 10, loss_fn=loss_fn, progress=False)
    assert "not taken" in str(info.value) and len(calls) == 3
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, snapshot[k])  # the third step changed nothing
    assert all(s["step"] == 2 for s in opt.state.values())


def test_a_step_really_updates_the_model(digits):
    tl.manual_seed(0)
    model = models.MLP([64, 10])
    before = model.fc1.weight.data.copy()
    x, y = batch_source(digits)()
    loss = F.cross_entropy(model(tl.Tensor(x)), y)
    loss.backward()
    expected = before - 0.5 * model.fc1.weight.grad
    model.zero_grad()
    train(model, optim.SGD(model, lr=0.5), lambda: (x, y), 1, progress=False)
    np.testing.assert_allclose(model.fc1.weight.data, expected, rtol=1e-5, atol=1e-7)


def test_clip_norm_limits_the_update(digits):
    tl.manual_seed(0)
    model = models.MLP([64, 10])
    before = [p.data.copy() for p in model.parameters()]
    x, y = batch_source(digits)()
    train(model, optim.SGD(model, lr=1.0), lambda: (x, y), 1, clip_norm=1e-3, progress=False)
    change = math.sqrt(sum(float(((p.data - b) ** 2).sum()) for p, b in zip(model.parameters(), before)))
    assert change == pytest.approx(1e-3, rel=1e-3)  # SGD with lr 1 moves by the clipped gradient


def test_schedule_is_stepped_and_recorded(digits):
    tl.manual_seed(0)
    model = models.MLP([64, 10])
    opt = optim.SGD(model, lr=1.0)
    sched = optim.CosineSchedule(opt, total_steps=10, warmup_steps=0, min_ratio=0.0)
    h = train(model, opt, batch_source(digits), 10, schedule=sched, eval_every=5, progress=False)
    # the row holds the lr for the next step
    assert h.column("lr") == pytest.approx([optim.cosine_lr(5, 1.0, 10), 0.0])
    assert sched.last_step == 10


def test_divergence_raises_naming_the_step(digits):
    calls = []

    def loss_fn(model, x, y):
        calls.append(1)
        loss = F.cross_entropy(model(x), y)
        return loss * float("inf") if len(calls) == 3 else loss

    tl.manual_seed(0)
    model = models.MLP([64, 10])
    with pytest.raises(FloatingPointError, match="diverged at step 3: the loss is inf"):
        train(model, optim.SGD(model, lr=0.1), batch_source(digits), 10, loss_fn=loss_fn, progress=False)
    assert len(calls) == 3  # it stopped there

    def nan_loss(model, x, y):
        return F.cross_entropy(model(x), y) * float("nan")

    with pytest.raises(FloatingPointError, match="step 1: the loss is nan"):
        train(model, optim.SGD(model, lr=0.1), batch_source(digits), 3, loss_fn=nan_loss, progress=False)


def test_a_huge_learning_rate_diverges(digits):
    tl.manual_seed(0)
    model = models.MLP([64, 64, 10])
    before = {k: v.copy() for k, v in model.state_dict().items()}
    with pytest.raises(FloatingPointError, match=r"diverged at step \d+") as info, np.errstate(all="ignore"):
        train(model, optim.SGD(model, lr=1e12), batch_source(digits), 50, progress=False)
    step = int(re.search(r"step (\d+)", str(info.value)).group(1))
    assert 2 <= step <= 50
    assert any(not np.array_equal(v, before[k]) for k, v in model.state_dict().items())


def test_progress_false_prints_nothing(digits, capsys):
    digits_run(digits, steps=5, eval_every=2, progress=False)
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


def test_progress_bar_reports_eval_metrics(digits, capsys):
    pytest.importorskip("tqdm")
    digits_run(digits, steps=4, eval_every=2, progress=True, desc="mlp-demo")
    err = capsys.readouterr().err
    assert "mlp-demo" in err


def test_zero_steps_evaluates_once(digits):
    _, h = digits_run(digits, steps=0)
    assert len(h.rows) == 1 and h.rows[0]["step"] == 0
    assert math.isnan(h.rows[0]["train_loss"])
    assert 0 <= h.rows[0]["eval_accuracy"] <= 1
    assert h.train_losses == []


def test_train_argument_errors(digits):
    model = models.MLP([64, 10])
    opt = optim.SGD(model, lr=0.1)
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got -1"):
        train(model, opt, batch_source(digits), -1, progress=False)
    with pytest.raises(ValueError, match="steps must be an integer >= 0, got 5.0"):
        train(model, opt, batch_source(digits), 5.0, progress=False)
    with pytest.raises(ValueError, match="eval_every must be an integer >= 1, got 0"):
        train(model, opt, batch_source(digits), 5, eval_every=0, progress=False)
    with pytest.raises(ValueError, match="clip_norm must be a finite number > 0, got nan"):
        train(model, opt, batch_source(digits), 5, clip_norm=float("nan"), progress=False)
    with pytest.raises(ValueError, match="train: seed must be an integer >= 0, got '0'"):
        train(model, opt, batch_source(digits), 5, seed="0", progress=False)
    with pytest.raises(ValueError, match="evaluate_classifier: batch_size must be an integer >= 1, got 0"):
        evaluate_classifier(model, digits.x_test, digits.y_test, batch_size=0)
    with pytest.raises(ValueError, match="evaluate_lm: batches must be an integer >= 1, got 2.5"):
        evaluate_lm(model, np.arange(100), 8, batches=2.5)


# ---------------------------------------------------------------------------------------------
# evaluation helpers


@pytest.mark.parametrize("batch_size", [7, 512, 1000])
def test_evaluate_classifier_matches_direct_computation(digits, batch_size, backend):
    tl.manual_seed(0)
    model = models.MLP([64, 16, 10])
    x, y = digits.x_test[:200], digits.y_test[:200]
    out = evaluate_classifier(model, x, y, batch_size=batch_size)
    logits = tl.to_numpy(model(tl.Tensor(x)).data).astype(np.float64)
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert out["loss"] == pytest.approx(-logp[np.arange(200), y].mean(), rel=1e-5)
    assert out["accuracy"] == float((logits.argmax(-1) == y).mean())
    assert set(out) == {"loss", "accuracy"}
    with pytest.raises(ValueError, match="no examples"):
        evaluate_classifier(model, x[:0], y[:0])


def test_evaluate_lm_matches_direct_computation():
    tl.manual_seed(0)
    g = models.GPT(models.GPTConfig(vocab_size=9, block_size=6, n_layer=1, n_head=2, n_embd=8))
    ids = np.random.default_rng(5).integers(0, 9, 300)
    out = evaluate_lm(g, ids, block_size=6, batch_size=4, batches=3, seed=42)
    rng = np.random.default_rng(42)
    losses = []
    for _ in range(3):
        starts = rng.integers(0, 300 - 6 - 1, 4)
        x = np.stack([ids[s : s + 6] for s in starts])
        y = np.stack([ids[s + 1 : s + 7] for s in starts])
        _, loss = g(x, y)
        losses.append(loss.item())
    assert out == {"loss": pytest.approx(float(np.mean(losses)), rel=1e-6)}
    assert evaluate_lm(g, ids, 6, 4, 3, seed=42) == out  # fixed seed: same windows
    assert evaluate_lm(g, ids, 6, 4, 3, seed=43)["loss"] != out["loss"]
    with pytest.raises(ValueError, match=r"need more than block_size \+ 1 = 7 ids, got 7"):
        evaluate_lm(g, ids[:7], block_size=6)


def test_evaluate_lm_inside_train_for_a_gpt():
    tl.manual_seed(0)
    g = models.GPT(models.GPTConfig(vocab_size=5, block_size=8, n_layer=1, n_head=2, n_embd=16))
    pattern = np.tile(np.arange(5), 40)  # 0 1 2 3 4 0 1 2 ... : perfectly predictable
    r = np.random.default_rng(0)

    def batches():
        starts = r.integers(0, len(pattern) - 9, 8)
        return np.stack([pattern[s : s + 8] for s in starts]), np.stack(
            [pattern[s + 1 : s + 9] for s in starts]
        )

    def lm_loss(model, x, y):
        return model(x, y)[1]

    h = train(
        g,
        optim.AdamW(g, lr=1e-2),
        batches,
        60,
        loss_fn=lm_loss,
        eval_fn=lambda m: evaluate_lm(m, pattern, block_size=8, batches=2),
        eval_every=30,
        progress=False,
    )
    assert set(h.final) == {"step", "train_loss", "eval_loss", "seconds", "lr"}
    assert h.rows[0]["eval_loss"] > h.rows[1]["eval_loss"]
    assert h.final["eval_loss"] < 0.2


def test_a_failing_eval_fn_leaves_the_model_in_training_mode():
    model = models.MLP([4, 3])
    opt = optim.SGD(model.parameters(), lr=0.1)
    batch = lambda: (np.ones((2, 4), np.float32), np.array([0, 1]))

    def bad_eval(m):
        raise KeyError("eval broke")

    with pytest.raises(KeyError):
        train(model, opt, batch, 2, eval_fn=bad_eval, eval_every=1, progress=False)
    assert model.training
