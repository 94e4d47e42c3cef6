"""NumPy and the GPU backend compute the same thing: every op, layer, LoRA variant and optimizer
step, in value and in every gradient, in float32 and float64.

Each case is built on NumPy from one seed, moved to the other backend, run on both, and the
outputs and gradients compared. The other backend is CuPy where a GPU is present (skipped
with a reason where not), and the CPU stand-in of tests/standin_backend.py everywhere: on the
stand-in the numbers are NumPy's, so what it proves is that every op runs on CuPy-like arrays
that refuse NumPy ones, and that every result and gradient stays on the moved backend.
"""

import dataclasses
import math

import numpy as np
import pytest
import standin_backend as S

import tinylora as tl
import tinylora.backend as B
import tinylora.functional as F
from tinylora import lora, nn, optim
from tinylora.models import GPT, MLP, GPTConfig

# float32 results differ by summation order (BLAS vs cuBLAS, tree reductions); float64 barely
TOLERANCE = {np.float32: 2e-4, np.float64: 1e-9}


@pytest.fixture(params=["standin", "cupy"])
def other(request):
    """The backend compared with NumPy."""
    if request.param == "cupy":
        if "cupy" not in tl.available_backends():
            pytest.skip("backend 'cupy' is not available here (needs CuPy and a CUDA device)")
        yield "cupy"
        return
    S.register()
    yield S.NAME
    B.unregister_backend(S.NAME)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request):
    return request.param


# ---- the cases: each returns (module or None, leaf tensors, fn(*leaves) -> Tensor) -----------------


def leaves(rng, dtype, *shapes, positive=False):
    out = []
    for shape in shapes:
        a = rng.standard_normal(shape)
        out.append(tl.Tensor((np.abs(a) + 0.5 if positive else a).astype(dtype), requires_grad=True))
    return out


def op(fn, *shapes, positive=False):
    return lambda rng, dtype: (None, leaves(rng, dtype, *shapes, positive=positive), fn)


def ids(rng, shape, n):
    return rng.integers(0, n, shape)


TENSOR_OPS = {
    "add": op(lambda a, b: a + b, (3, 4), (4,)),
    "sub": op(lambda a, b: a - b, (2, 3, 4), (3, 1)),
    "mul": op(lambda a, b: a * b, (3, 4), (1, 4)),
    "div": op(lambda a, b: a / b, (3, 4), (3, 4), positive=True),
    "pow": op(lambda a: a**3 + a**0.5, (3, 4), positive=True),
    "matmul": op(lambda a, b: a @ b, (2, 3, 4), (4, 5)),
    "neg": op(lambda a: -a, (5,)),
    "sum": op(lambda a: a.sum(axis=1, keepdims=True) + a.sum(), (3, 4)),
    "mean": op(lambda a: a.mean(axis=0), (3, 4)),
    "max": op(lambda a: a.max(axis=-1), (3, 5)),
    "exp_log_sqrt": op(lambda a: a.exp() + a.log() + a.sqrt(), (3, 4), positive=True),
    "tanh_relu_sigmoid": op(lambda a: a.tanh() + a.relu() + a.sigmoid(), (3, 4)),
    "reshape_transpose": op(lambda a: a.reshape(4, 3).transpose(1, 0) * a.T.T, (3, 4)),
    "index": op(lambda a: a[1:, ::2] * a[np.array([0, 2, 2]), 1:3].sum(), (3, 4)),
    "cat_stack": op(lambda a, b: tl.cat([a, b], axis=1) + tl.stack([a, b]).sum(axis=0).sum(), (2, 3), (2, 3)),
    "where": op(lambda a, b: tl.where(a.data > 0, a, b), (3, 4), (3, 4)),
}


def lora_case(fold: bool, with_adapter_input: bool = False):
    def make(rng, dtype):
        n = 40 if fold else 2  # many rows fold s B A into W, few take the two thin products
        x, w, b, a, bm = leaves(rng, dtype, (n, 6), (5, 6), (5,), (3, 6), (5, 3))
        extra = leaves(rng, dtype, (n, 6)) if with_adapter_input else []
        fn = lambda x, w, b, a, bm, *xa: F.lora_linear(x, w, b, a, bm, 0.7, x_adapter=xa[0] if xa else None)
        return None, [x, w, b, a, bm, *extra], fn

    return make


def cross_entropy_case(ignore: bool):
    def make(rng, dtype):
        (z,) = leaves(rng, dtype, (2, 5, 7))
        t = ids(rng, (2, 5), 7)
        if ignore:
            t[0, 1] = -100
        return None, [z], lambda z: F.cross_entropy(z, t, ignore_index=-100 if ignore else None)

    return make


def attention_case(causal: bool):
    def make(rng, dtype):
        q, k, v = leaves(rng, dtype, (2, 3, 6, 4), (2, 3, 6, 4), (2, 3, 6, 4))
        return None, [q, k, v], lambda q, k, v: F.scaled_dot_product_attention(q, k, v, causal=causal)

    return make


def embedding_case(rng, dtype):
    (w,) = leaves(rng, dtype, (9, 4))
    i = ids(rng, (3, 5), 9)
    i[0, :2] = 4  # a repeated id: its gradient rows add up
    return None, [w], lambda w: F.embedding(i, w)


FUNCTIONAL = {
    "linear": op(F.linear, (2, 3, 6), (5, 6), (5,)),
    "lora_linear_folded": lora_case(fold=True),
    "lora_linear_thin": lora_case(fold=False),
    "lora_linear_adapter_input": lora_case(fold=True, with_adapter_input=True),
    "relu": op(F.relu, (3, 4)),
    "gelu_tanh": op(lambda x: F.gelu(x, approximate="tanh"), (3, 4)),
    "gelu_exact": op(lambda x: F.gelu(x, approximate="none"), (3, 4)),
    "silu": op(F.silu, (3, 4)),
    "softmax": op(lambda x: F.softmax(x, axis=-1) + F.softmax(x, axis=0), (3, 4)),
    "log_softmax": op(F.log_softmax, (2, 3, 4)),
    "cross_entropy": cross_entropy_case(ignore=False),
    "cross_entropy_ignore_index": cross_entropy_case(ignore=True),
    "layer_norm": op(F.layer_norm, (2, 3, 6), (6,), (6,)),
    "rms_norm": op(F.rms_norm, (2, 3, 6), (6,)),
    "embedding": embedding_case,
    "attention_causal": attention_case(causal=True),
    "attention_full": attention_case(causal=False),
}


def reference_cases() -> dict:
    """The textbook versions (tinylora.reference) on the same inputs, where that module exists."""
    try:
        import tinylora.reference as R
    except ImportError:
        return {}

    def ce(rng, dtype):
        (z,) = leaves(rng, dtype, (2, 5, 7))
        t = ids(rng, (2, 5), 7)
        t[0, 1] = -100
        return None, [z], lambda z: R.cross_entropy(z, t, ignore_index=-100)

    def attention(rng, dtype):
        q, k, v = leaves(rng, dtype, (2, 3, 6, 4), (2, 3, 6, 4), (2, 3, 6, 4))
        return None, [q, k, v], lambda q, k, v: R.scaled_dot_product_attention(q, k, v, causal=True)

    return {
        "R.linear": op(R.linear, (2, 3, 6), (5, 6), (5,)),
        "R.lora_linear": op(
            lambda x, w, b, a, bm: R.lora_linear(x, w, b, a, bm, 0.7), (4, 6), (5, 6), (5,), (3, 6), (5, 3)
        ),
        "R.softmax": op(R.softmax, (3, 4)),
        "R.log_softmax": op(R.log_softmax, (2, 3, 4)),
        "R.cross_entropy": ce,
        "R.layer_norm": op(R.layer_norm, (2, 3, 6), (6,), (6,)),
        "R.rms_norm": op(R.rms_norm, (2, 3, 6), (6,)),
        "R.gelu": op(R.gelu, (3, 4)),
        "R.attention": attention,
    }


FUNCTIONAL.update(reference_cases())


def module_case(build, inputs):
    """A module built on NumPy from the seed; inputs(rng, dtype) gives its (non-leaf) arguments."""

    def make(rng, dtype):
        model = build().astype(dtype)
        args = inputs(rng, dtype)
        return model, [], lambda: model(*args)

    return make


def floats(*shape):
    return lambda rng, dtype: [rng.standard_normal(shape).astype(dtype)]


def gpt_config():
    return GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=8)


def token_ids(rng, dtype):
    return [ids(rng, (2, 8), 13)]


def randomise_lora(model, rng):
    """Give every adapter matrix random values (B starts at zero, which would hide A's gradient)."""
    for name, p in model.named_parameters():
        if "lora_" in name or "vera_" in name:
            p.data = (rng.standard_normal(p.shape) * 0.3).astype(p.dtype)
    return model


def adapted(config_kwargs, build=lambda: GPT(gpt_config()), inputs=token_ids, after=None):
    """A model adapted by config; float inputs become leaves, so their gradient is compared too."""

    def make(rng, dtype):
        model = build().astype(dtype)
        lora.apply_lora(model, lora.LoRAConfig(**config_kwargs))
        randomise_lora(model, rng)
        if after:
            after(model)
        args = inputs(rng, dtype)
        if all(a.dtype.kind == "f" for a in args):
            return model, [tl.Tensor(a, requires_grad=True) for a in args], model
        return model, [], lambda: model(*args)

    return make


def with_second_adapter(model):
    lora.add_adapter(model, "second", lora.LoRAConfig(r=3, alpha=3, init="gaussian"))
    lora.set_adapter(model, "second")


def merged(model):
    model.eval()
    lora.merge_lora(model)


def config_has(field: str) -> bool:
    return field in {f.name for f in dataclasses.fields(lora.LoRAConfig)}


MODULES = {
    "nn.Linear": module_case(lambda: nn.Linear(6, 5), floats(4, 6)),
    "nn.Embedding": module_case(lambda: nn.Embedding(9, 4), lambda rng, dtype: [ids(rng, (3, 2), 9)]),
    "nn.LayerNorm": module_case(lambda: nn.LayerNorm(6), floats(2, 6)),
    "nn.RMSNorm": module_case(lambda: nn.RMSNorm(6), floats(2, 6)),
    "MLP": module_case(lambda: MLP([6, 8, 8, 3]), floats(4, 6)),
    "GPT": module_case(lambda: GPT(gpt_config()), token_ids),
    "LoRA kaiming (GPT q, v)": adapted(dict(r=2, alpha=4)),
    "LoRA gaussian, all linear layers": adapted(
        dict(
            r=2, alpha=4, init="gaussian", target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "up_proj")
        )
    ),
    "LoRA pissa": adapted(dict(r=2, alpha=2, init="pissa")),
    "rsLoRA": adapted(dict(r=4, alpha=4, rslora=True)),
    "LoRA, second adapter active": adapted(dict(r=2, alpha=4), after=with_second_adapter),
    "LoRA on an MLP": adapted(
        dict(r=2, alpha=4, target_modules=("fc1", "fc3")),
        build=lambda: MLP([6, 8, 8, 3]),
        inputs=floats(4, 6),
    ),
    "LoRA merged (eval, MLP)": adapted(
        dict(r=2, alpha=4, target_modules=("fc1", "fc3")),
        build=lambda: MLP([6, 8, 8, 3]),
        inputs=floats(4, 6),
        after=merged,
    ),
}
if config_has("dora"):
    MODULES["DoRA"] = adapted(dict(r=2, alpha=4, dora=True))
if hasattr(lora, "LoRAEmbedding"):
    MODULES["LoRA on the embedding and q"] = adapted(dict(r=2, alpha=4, target_modules=("tok_emb", "q_proj")))
if config_has("rank_pattern"):
    MODULES["LoRA rank_pattern"] = adapted(dict(r=2, alpha=4, rank_pattern={"v_proj": 3}))
if hasattr(lora, "apply_vera") and hasattr(lora, "VeRAConfig"):

    def vera_case(rng, dtype):
        model = GPT(gpt_config()).astype(dtype)
        lora.apply_vera(model, lora.VeRAConfig(r=4, target_modules=("q_proj", "v_proj")))
        randomise_lora(model, rng)
        args = token_ids(rng, dtype)
        return model, [], lambda: model(*args)

    MODULES["VeRA"] = vera_case

CASES = {**TENSOR_OPS, **FUNCTIONAL, **MODULES}


# ---- running a case on one backend --------------------------------------------------------------


def run(case, name: str, dtype) -> dict:
    """Build the case on NumPy, move it to backend `name`, run forward and backward there."""
    tl.manual_seed(0)
    rng = np.random.default_rng(0)
    with tl.use_backend("numpy"):
        model, xs, fn = case(rng, dtype)
    xs = [x.to(name) for x in xs]
    if model is not None:
        model.to(name)
    with tl.use_backend(name):
        out = fn(*xs)
        weights = rng.standard_normal(out.shape).astype(out.dtype)  # a loss that weighs every output
        (out * tl.Tensor(weights)).sum().backward()
    named = [(f"input {i}", x) for i, x in enumerate(xs)]
    named += list(model.named_parameters()) if model is not None else []
    grads = {n: t.grad for n, t in named if t.requires_grad}
    placed = {
        "output": B.backend_of(out.data),
        **{n: B.backend_of(g) for n, g in grads.items() if g is not None},
    }
    return {
        "out": B.to_numpy(out.data),
        "grads": {n: None if g is None else B.to_numpy(g) for n, g in grads.items()},
        "placed": placed,
    }


def assert_close(actual, expected, dtype, what):
    tol = TOLERANCE[dtype]
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=tol, atol=tol * scale, err_msg=what)


@pytest.mark.parametrize("case", list(CASES))
def test_the_other_backend_computes_what_numpy_computes(case, other, dtype):
    ref = run(CASES[case], "numpy", dtype)
    got = run(CASES[case], other, dtype)
    wrong = {n: b for n, b in got["placed"].items() if b != other}
    assert not wrong, f"{case}: results left backend {other!r}: {wrong}"
    assert got["out"].dtype == ref["out"].dtype, f"{case}: dtype {got['out'].dtype} on {other}"
    assert_close(got["out"], ref["out"], dtype, f"{case}: output")
    assert got["grads"].keys() == ref["grads"].keys()
    assert any(g is not None for g in ref["grads"].values()), f"{case}: nothing got a gradient"
    for n, g in ref["grads"].items():
        assert (got["grads"][n] is None) == (g is None), f"{case}: gradient of {n} on one backend only"
        if g is not None:
            assert_close(got["grads"][n], g, dtype, f"{case}: gradient of {n}")


OPTIMIZERS = {
    "SGD momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.01),
    "Adam": lambda ps: optim.Adam(ps, lr=0.01),
    "AdamW": lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=0.1),
}


def train_two_steps(make_opt, name, dtype) -> list:
    tl.manual_seed(0)
    with tl.use_backend("numpy"):
        model = MLP([6, 8, 3]).astype(dtype)
    model.to(name)
    opt = make_opt(model.parameters())
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((5, 6)).astype(dtype), rng.integers(0, 3, 5)
    with tl.use_backend(name):
        for _ in range(2):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert {B.backend_of(p.data) for p in model.parameters()} == {name}
    return [B.to_numpy(p.data) for p in model.parameters()]


@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_optimizer_steps_match(opt, other, dtype):
    ref = train_two_steps(OPTIMIZERS[opt], "numpy", dtype)
    got = train_two_steps(OPTIMIZERS[opt], other, dtype)
    tl.manual_seed(0)
    with tl.use_backend("numpy"):
        start = [p.numpy() for p in MLP([6, 8, 3]).astype(dtype).parameters()]
    assert any(not np.allclose(a, b) for a, b in zip(ref, start))  # the steps did move the weights
    for i, (a, b) in enumerate(zip(got, ref)):
        assert_close(a, b, dtype, f"{opt}: parameter {i}")


def test_dropout_keeps_its_backend_and_scales_what_it_keeps(other):
    with tl.use_backend(other):
        x = tl.Tensor(np.ones((64, 64), np.float32), requires_grad=True)
        y = F.dropout(x, 0.25, training=True)
        y.sum().backward()
    kept = B.to_numpy(y.data)
    assert B.backend_of(y.data) == B.backend_of(x.grad) == other
    assert set(np.unique(kept)) <= {0.0, np.float32(1 / 0.75)} and 0.6 < (kept > 0).mean() < 0.9
    np.testing.assert_array_equal(B.to_numpy(x.grad), kept)  # d(sum)/dx is the mask itself
    assert math.isclose(float(B.to_numpy(y.data).sum()), float(kept.sum()))
