"""Models: the MLP (shapes, activations, digits accuracy) and the GPT (names, init, causality,
overfitting, generation, a NumPy reference forward, gradients and an optional torch oracle)."""

import contextlib
import math

import numpy as np
import pytest

import tinylora as tl
import tinylora.functional as F
from tinylora import models, nn, optim
from tinylora.data import load_digits
from tinylora.models.gpt import sample_next

# ---------------------------------------------------------------------------------------------
# MLP


def np_gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


NP_ACTS = {
    "relu": lambda x: np.maximum(x, 0),
    "gelu": np_gelu_tanh,
    "tanh": np.tanh,
    "silu": lambda x: x / (1 + np.exp(-x)),
}


def test_mlp_layers_and_shapes(backend):
    m = models.MLP([64, 128, 128, 10])
    assert [n for n, _ in m.named_children()] == ["fc1", "fc2", "fc3"]
    shapes = {n: p.shape for n, p in m.named_parameters()}
    assert shapes == {
        "fc1.weight": (128, 64),
        "fc1.bias": (128,),
        "fc2.weight": (128, 128),
        "fc2.bias": (128,),
        "fc3.weight": (10, 128),
        "fc3.bias": (10,),
    }
    assert sum(p.size for p in m.parameters()) == 64 * 128 + 128 + 128 * 128 + 128 + 128 * 10 + 10
    out = m(tl.Tensor(np.zeros((5, 64), np.float32)))
    assert out.shape == (5, 10) and out.dtype == np.float32
    assert models.MLP([3, 2])(tl.Tensor(np.ones((4, 3), np.float32))).shape == (4, 2)
    assert repr(m).startswith("MLP(sizes=[64, 128, 128, 10], activation='relu'")


@pytest.mark.parametrize("activation", ["relu", "gelu", "tanh", "silu"])
def test_mlp_forward_matches_numpy(activation):
    m = models.MLP([5, 7, 6, 3], activation=activation).astype(np.float64)
    x = np.random.default_rng(0).standard_normal((4, 5))
    sd = m.state_dict()
    h = x
    for i in (1, 2, 3):
        h = h @ sd[f"fc{i}.weight"].T + sd[f"fc{i}.bias"]
        if i < 3:
            h = NP_ACTS[activation](h)  # no activation after the last layer
    np.testing.assert_allclose(m(tl.Tensor(x)).data, h, rtol=1e-10, atol=1e-12)


def test_mlp_gradcheck():
    m = models.MLP([3, 4, 2], activation="tanh").astype(np.float64)
    x = tl.Tensor(np.random.default_rng(1).standard_normal((2, 3)))
    y = np.array([1, 0])
    assert tl.gradcheck(lambda *ps: F.cross_entropy(m(x), y), m.parameters())


def test_mlp_bad_arguments():
    with pytest.raises(ValueError, match="at least an input and an output size"):
        models.MLP([64])
    with pytest.raises(ValueError, match="at least an input and an output size"):
        models.MLP([])
    with pytest.raises(ValueError, match="activation must be one of relu, gelu, tanh, silu, got 'sigmoid'"):
        models.MLP([4, 2], activation="sigmoid")
    with pytest.raises(ValueError, match="sizes must be positive"):
        models.MLP([4, 0, 2])
    with pytest.raises(ValueError, match="63 features"):
        models.MLP([64, 10])(tl.Tensor(np.zeros((1, 63), np.float32)))


def blas_single_thread():
    """One BLAS thread: on a busy 2-core machine OpenBLAS threads make these small matmuls 5-50x slower."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # comes with scikit-learn; without it, just run with the default threads
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def test_mlp_learns_digits_to_97_percent():
    # a 64-128-128-10 MLP reaches 97.1% to 98.0% on this split over seeds 0..11 with these settings
    d = load_digits()
    tl.manual_seed(0)
    model = models.MLP([64, 128, 128, 10], activation="gelu")
    opt = optim.AdamW(model, lr=1e-2, weight_decay=0.1)
    schedule = optim.CosineSchedule(opt, total_steps=600, min_ratio=0.0)
    r = np.random.default_rng(0)
    with blas_single_thread():
        for _ in range(600):
            idx = r.integers(0, len(d.y_train), 64)
            loss = F.cross_entropy(model(tl.Tensor(d.x_train[idx])), d.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
    with tl.no_grad():
        pred = model(tl.Tensor(d.x_test)).data.argmax(axis=-1)
    accuracy = float((tl.to_numpy(pred) == d.y_test).mean())
    assert accuracy >= 0.97, accuracy


# ---------------------------------------------------------------------------------------------
# GPT: structure


def make_gpt(seed=0, **kw):
    cfg = dict(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16)
    cfg.update(kw)
    tl.manual_seed(seed)
    return models.GPT(models.GPTConfig(**cfg))


def test_gpt_output_shapes(backend):
    g = make_gpt()
    idx = np.random.default_rng(0).integers(0, 13, (3, 5))
    logits = g(idx)
    assert logits.shape == (3, 5, 13) and logits.dtype == np.float32
    logits2, loss = g(idx, np.roll(idx, -1, axis=1))
    assert logits2.shape == (3, 5, 13) and loss.shape == ()
    np.testing.assert_allclose(tl.to_numpy(logits2.data), tl.to_numpy(logits.data), rtol=1e-6)
    # near the uniform loss at initialisation (small weights)
    assert abs(loss.item() - math.log(13)) < 0.3
    assert g(tl.Tensor(idx)).shape == (3, 5, 13)  # a Tensor of ids works too
    assert g(idx[:, :1]).shape == (3, 1, 13)


def test_gpt_module_names_follow_the_contract():
    g = make_gpt(n_layer=3)
    modules = dict(g.named_modules())
    for name in ("tok_emb", "pos_emb", "ln_f", "lm_head"):
        assert name in modules
    assert isinstance(modules["tok_emb"], nn.Embedding) and isinstance(modules["ln_f"], nn.LayerNorm)
    for i in range(3):
        p = f"blocks.{i}."
        assert isinstance(modules[p + "ln_1"], nn.LayerNorm) and isinstance(modules[p + "ln_2"], nn.LayerNorm)
        for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
            lin = modules[p + "attn." + proj]
            assert isinstance(lin, nn.Linear) and lin.weight.shape == (16, 16)
        assert modules[p + "mlp.up_proj"].weight.shape == (64, 16)  # 4C x C
        assert modules[p + "mlp.down_proj"].weight.shape == (16, 64)
    assert "blocks.3" not in modules
    linears = sorted(n for n, m in modules.items() if isinstance(m, nn.Linear))
    assert len(linears) == 3 * 6 + 1
    assert modules["lm_head"].bias is None
    assert g.tok_emb.weight.shape == (13, 16) and g.pos_emb.weight.shape == (8, 16)


def test_gpt_without_bias_and_untied():
    g = make_gpt(bias=False, tie_weights=False)
    names = [n for n, _ in g.named_parameters()]
    assert not any(n.endswith("bias") for n in names)
    assert g.lm_head.weight is not g.tok_emb.weight and "lm_head.weight" in names
    assert g(np.zeros((1, 3), np.int64)).shape == (1, 3, 13)


def test_gpt_init_statistics():
    n_layer = 4
    g = make_gpt(vocab_size=256, block_size=64, n_layer=n_layer, n_head=4, n_embd=64)
    sd = g.state_dict()
    resid = 0.02 / math.sqrt(2 * n_layer)

    def pooled(suffixes):
        return np.concatenate([v.ravel() for k, v in sd.items() if k.endswith(suffixes)])

    plain = pooled(("q_proj.weight", "k_proj.weight", "v_proj.weight", "up_proj.weight"))
    scaled = pooled(("o_proj.weight", "down_proj.weight"))
    assert abs(plain.std() / 0.02 - 1) < 0.03 and abs(plain.mean()) < 1e-3
    assert abs(scaled.std() / resid - 1) < 0.03 and abs(scaled.mean()) < 1e-3
    for emb in ("tok_emb.weight", "pos_emb.weight"):
        assert abs(sd[emb].std() / 0.02 - 1) < 0.05, emb
    for k, v in sd.items():
        if k.endswith("bias"):
            assert not v.any(), k  # biases start at zero
        elif v.ndim == 1:
            np.testing.assert_array_equal(v, np.ones_like(v), err_msg=k)  # LayerNorm weights start at one
    assert g.lm_head.weight is g.tok_emb.weight
    untied = make_gpt(vocab_size=256, block_size=64, n_layer=1, n_head=4, n_embd=64, tie_weights=False)
    assert abs(untied.lm_head.weight.data.std() / 0.02 - 1) < 0.05


def test_gpt_init_is_reproducible_under_a_seed():
    a, b, c = make_gpt(seed=5), make_gpt(seed=5), make_gpt(seed=6)
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(v, b.state_dict()[k])
    assert not np.array_equal(a.tok_emb.weight.data, c.tok_emb.weight.data)


def test_gpt_is_causal():
    g = make_gpt(n_layer=2)
    randomize_norms(g)
    r = np.random.default_rng(1)
    idx = r.integers(0, 13, (2, 8))
    base = g(idx).data
    for t in (0, 3, 7):
        changed = idx.copy()
        changed[:, t] = (changed[:, t] + 1 + r.integers(0, 12, 2)) % 13
        out = g(changed).data
        np.testing.assert_array_equal(out[:, :t], base[:, :t])  # earlier positions: bit-for-bit equal
        assert np.abs(out[:, t:] - base[:, t:]).max() > 1e-4  # this and later positions do change


def test_gpt_sequence_and_shape_errors():
    g = make_gpt(block_size=8)
    with pytest.raises(ValueError, match="sequence length 9 is longer than block_size 8"):
        g(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match=r"idx must be \(batch, time\).*\(5,\)"):
        g(np.zeros(5, np.int64))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 3\)"):
        g(np.zeros((1, 2, 3), np.int64))


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(vocab_size=0), "vocab_size must be a positive integer, got 0"),
        (dict(block_size=-1), "block_size must be a positive integer, got -1"),
        (dict(n_layer=0), "n_layer must be a positive integer"),
        (dict(n_head=0), "n_head must be a positive integer"),
        (dict(n_embd=0), "n_embd must be a positive integer"),
        (dict(n_embd=10, n_head=4), "n_embd=10 is not a multiple of n_head=4"),
        (dict(dropout=1.0), r"dropout must be in \[0, 1\), got 1.0"),
        (dict(dropout=-0.1), r"dropout must be in \[0, 1\)"),
    ],
)
def test_gpt_config_validation(kw, match):
    cfg = dict(vocab_size=10, block_size=8, n_layer=1, n_head=2, n_embd=8)
    cfg.update(kw)
    with pytest.raises(ValueError, match=match):
        models.GPTConfig(**cfg)


def test_gpt_config_to_dict():
    cfg = models.GPTConfig(vocab_size=10, block_size=8)
    assert cfg.to_dict() == dict(
        vocab_size=10, block_size=8, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=True, tie_weights=True
    )
    assert models.GPTConfig(**cfg.to_dict()) == cfg


def test_gpt_dropout_only_in_training_mode():
    g = make_gpt(dropout=0.3)
    idx = np.random.default_rng(0).integers(0, 13, (2, 6))
    a, b = g(idx).data, g(idx).data
    assert not np.allclose(a, b)  # two different dropout masks
    g.eval()
    c, d = g(idx).data, g(idx).data
    np.testing.assert_array_equal(c, d)
    plain = make_gpt(dropout=0.0)
    plain.load_state_dict(g.state_dict())
    np.testing.assert_allclose(plain(idx).data, c, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# GPT: against a reference forward written in NumPy, and its gradients


def randomize_norms(g, seed=0):
    """Make LayerNorm weights/biases and all biases non-trivial so the reference checks see them."""
    r = np.random.default_rng(seed)
    for name, p in g.named_parameters():
        if p.ndim == 1:
            p.data = (r.standard_normal(p.shape) * 0.3 + (0 if name.endswith("bias") else 1)).astype(p.dtype)
    return g


def np_layer_norm(x, w, b, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def np_gpt(sd, cfg, idx):
    """nanoGPT's forward from the contract, in float64 NumPy."""
    sd = {k: np.asarray(v, np.float64) for k, v in sd.items()}
    b, t = idx.shape
    c, h = cfg.n_embd, cfg.n_head
    d = c // h
    x = sd["tok_emb.weight"][idx] + sd["pos_emb.weight"][np.arange(t)]
    mask = np.triu(np.ones((t, t), bool), 1)
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."

        def lin(name, z, p=p):
            return z @ sd[p + name + ".weight"].T + sd[p + name + ".bias"]

        a = np_layer_norm(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = (lin(f"attn.{n}_proj", a).reshape(b, t, h, d).transpose(0, 2, 1, 3) for n in "qkv")
        att = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d)
        att = np.where(mask, -np.inf, att)
        att = np.exp(att - att.max(-1, keepdims=True))
        att /= att.sum(-1, keepdims=True)
        y = (att @ v).transpose(0, 2, 1, 3).reshape(b, t, c)
        x = x + lin("attn.o_proj", y)
        a = np_layer_norm(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        x = x + lin("mlp.down_proj", np_gelu_tanh(lin("mlp.up_proj", a)))
    x = np_layer_norm(x, sd["ln_f.weight"], sd["ln_f.bias"])
    head = sd["tok_emb.weight"] if cfg.tie_weights else sd["lm_head.weight"]
    return x @ head.T


def np_cross_entropy(logits, targets):
    z = logits.reshape(-1, logits.shape[-1])
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -logp[np.arange(len(z)), targets.ravel()].mean()


@pytest.mark.parametrize("tie", [True, False])
def test_gpt_matches_a_numpy_reference_forward(tie):
    g = randomize_norms(make_gpt(n_layer=2, n_head=4, n_embd=16, tie_weights=tie)).astype(np.float64)
    r = np.random.default_rng(2)
    idx, targets = r.integers(0, 13, (3, 7)), r.integers(0, 13, (3, 7))
    logits, loss = g(idx, targets)
    expected = np_gpt(g.state_dict(), g.config, idx)
    np.testing.assert_allclose(logits.data, expected, rtol=1e-10, atol=1e-12)
    assert loss.item() == pytest.approx(np_cross_entropy(expected, targets), rel=1e-12)


def test_gpt_gradients_of_every_parameter():
    g = randomize_norms(make_gpt(vocab_size=5, block_size=4, n_layer=1, n_head=2, n_embd=4)).astype(
        np.float64
    )
    r = np.random.default_rng(3)
    idx, targets = r.integers(0, 5, (2, 4)), r.integers(0, 5, (2, 4))
    params = g.parameters()
    assert len(params) == len(g.state_dict())
    assert tl.gradcheck(lambda *ps: g(idx, targets)[1], params)


# ---------------------------------------------------------------------------------------------
# GPT: learning and generation


def test_gpt_overfits_one_batch():
    g = make_gpt(vocab_size=16, block_size=8, n_layer=2, n_head=2, n_embd=32)
    r = np.random.default_rng(0)
    data = r.integers(0, 16, (4, 9))
    x, y = data[:, :-1], data[:, 1:]
    opt = optim.AdamW(g, lr=1e-2, weight_decay=0.0)
    first = None
    for _ in range(150):
        _, loss = g(x, y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    _, loss = g(x, y)
    assert first > 2.5 and loss.item() < 0.1, (first, loss.item())


def test_generate_is_deterministic_under_a_seed():
    g = make_gpt()
    g.train()
    prompt = np.array([[1, 2, 3], [4, 5, 6]])
    a = g.generate(prompt, 10, seed=0)
    b = g.generate(prompt, 10, seed=0)
    c = g.generate(prompt, 10, seed=1)
    assert isinstance(a, np.ndarray) and a.shape == (2, 13) and a.dtype == np.int64
    np.testing.assert_array_equal(a[:, :3], prompt)  # the prompt is kept
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert ((a >= 0) & (a < 13)).all()
    assert g.training  # the mode is restored
    g.eval()
    g.generate(prompt, 2, seed=0)
    assert not g.training
    assert g.generate(np.array([1, 2]), 3, seed=0).shape == (1, 5)  # a 1-D prompt is one row
    assert g.generate(tl.Tensor(prompt), 0).shape == (2, 3)


def test_generate_greedy_picks_the_argmax_and_crops_to_block_size():
    g = make_gpt(block_size=8)
    prompt = np.array([[3, 1, 4, 1, 5]])
    out = g.generate(prompt, 12, temperature=0.0)
    assert out.shape == (1, 17)  # longer than block_size: the context is cropped
    np.testing.assert_array_equal(out, g.generate(prompt, 12, temperature=0.0, seed=123))
    for t in range(5, 17):
        context = out[:, max(0, t - 8) : t]
        assert out[0, t] == int(np.argmax(g(context).data[0, -1])), t
    np.testing.assert_array_equal(g.generate(prompt, 12, temperature=1.0, top_k=1, seed=9), out)


def test_generate_respects_top_k():
    g = make_gpt(vocab_size=13)
    k = 3
    prompt = np.array([[0], [7], [12]])
    sampled_outside = 0
    for seed in range(4):
        out = g.generate(prompt, 6, temperature=2.0, top_k=k, seed=seed)
        for t in range(1, out.shape[1]):
            logits = g(out[:, :t]).data[:, -1]  # (B, vocab)
            kth = np.sort(logits, axis=-1)[:, -k]
            chosen = logits[np.arange(3), out[:, t]]
            assert (chosen >= kth).all(), (seed, t)
            sampled_outside += int((np.argsort(-logits, axis=-1)[:, 0] != out[:, t]).sum())
    assert sampled_outside > 0  # it samples: not always the argmax


def test_sample_next_distribution():
    rng = np.random.default_rng(0)
    logits = np.log(np.array([[0.1, 0.2, 0.3, 0.4]]))
    draws = np.array([sample_next(logits, 1.0, None, rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0.1, 0.2, 0.3, 0.4], atol=0.03)
    draws = np.array([sample_next(logits, 1.0, 2, rng)[0] for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, [0, 0, 3 / 7, 4 / 7], atol=0.03)
    # temperature sharpens: at 0.25 the weights are p^4
    draws = np.array([sample_next(logits, 0.25, None, rng)[0] for _ in range(4000)])
    p4 = np.array([0.1, 0.2, 0.3, 0.4]) ** 4
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, p4 / p4.sum(), atol=0.03)
    two = np.array([[0.0, 5.0, 1.0], [9.0, 0.0, 1.0]])
    np.testing.assert_array_equal(sample_next(two, 0, None, rng), [1, 0])
    np.testing.assert_array_equal(sample_next(two, 1.0, 10, rng).shape, (2,))  # top_k > vocab is fine


def test_generate_bad_arguments():
    g = make_gpt()
    with pytest.raises(ValueError, match="temperature must be >= 0, got -1"):
        g.generate(np.array([[1]]), 2, temperature=-1)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"top_k must be a positive integer or None, got {bad}"):
            g.generate(np.array([[1]]), 2, top_k=bad)


# ---------------------------------------------------------------------------------------------
# GPT: optional oracle (PyTorch)


def torch_gpt_forward(torch, w, cfg, idx, targets):
    """The same forward in PyTorch (as tinylora.bench.gpt_torch_step writes it)."""
    nnf = torch.nn.functional
    c, h = cfg.n_embd, cfg.n_head
    b, t = idx.shape
    x = w["tok_emb.weight"][idx] + w["pos_emb.weight"][torch.arange(t)]
    for i in range(cfg.n_layer):
        p = f"blocks.{i}."

        def lin(name, z, p=p):
            return nnf.linear(z, w[p + name + ".weight"], w[p + name + ".bias"])

        a = nnf.layer_norm(x, (c,), w[p + "ln_1.weight"], w[p + "ln_1.bias"])
        q, k, v = (lin(f"attn.{n}_proj", a).view(b, t, h, c // h).transpose(1, 2) for n in "qkv")
        y = nnf.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, c)
        x = x + lin("attn.o_proj", y)
        a = nnf.layer_norm(x, (c,), w[p + "ln_2.weight"], w[p + "ln_2.bias"])
        x = x + lin("mlp.down_proj", nnf.gelu(lin("mlp.up_proj", a), approximate="tanh"))
    x = nnf.layer_norm(x, (c,), w["ln_f.weight"], w["ln_f.bias"])
    logits = x @ (w["tok_emb.weight"] if cfg.tie_weights else w["lm_head.weight"]).T
    return logits, nnf.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-4), (np.float64, 1e-10)], ids=["f32", "f64"])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_gpt_matches_torch(dtype, tol, tie):
    torch = pytest.importorskip("torch")
    g = randomize_norms(
        make_gpt(vocab_size=17, block_size=8, n_layer=2, n_head=4, n_embd=16, tie_weights=tie)
    )
    g.astype(dtype)
    r = np.random.default_rng(4)
    idx, targets = r.integers(0, 17, (3, 8)), r.integers(0, 17, (3, 8))
    logits, loss = g(idx, targets)
    g.zero_grad()
    loss.backward()
    w = {k: torch.tensor(v, requires_grad=True) for k, v in g.state_dict().items()}
    t_logits, t_loss = torch_gpt_forward(torch, w, g.config, torch.tensor(idx), torch.tensor(targets))
    t_loss.backward()
    np.testing.assert_allclose(logits.data, t_logits.detach().numpy(), rtol=tol, atol=tol)
    assert loss.item() == pytest.approx(t_loss.item(), rel=tol, abs=tol)
    for name, p in g.named_parameters():
        expected = w[name].grad.numpy()
        scale = max(1.0, np.abs(expected).max())
        np.testing.assert_allclose(p.grad, expected, rtol=tol, atol=tol * scale, err_msg=name)
