"""nn: layers (values and gradients), Module registration and tree walking, state dicts."""

import math

import numpy as np
import pytest
from helpers import check_grad

import tinylora as tl
from tinylora import models, nn


def f64(a, requires_grad=True):
    return tl.Tensor(np.asarray(a, dtype=np.float64), requires_grad=requires_grad)


def randomize(module, seed=0, scale=0.5):
    """Give every parameter random values (so norms and biases are not just ones and zeros)."""
    r = np.random.default_rng(seed)
    for p in module.parameters():
        p.data = (r.standard_normal(p.shape) * scale + (1.0 if p.ndim == 1 else 0.0)).astype(p.dtype)
    return module


def params_snapshot(module):
    return {k: tl.to_numpy(v).copy() for k, v in module.state_dict().items()}


def assert_same_params(module, snapshot):
    now = params_snapshot(module)
    assert list(now) == list(snapshot)
    for k in now:
        np.testing.assert_array_equal(now[k], snapshot[k], err_msg=k)


# ---------------------------------------------------------------------------------------------
# layers: values


def test_linear_shapes_init_and_values(backend):
    lin = nn.Linear(5, 3)
    assert lin.weight.shape == (3, 5) and lin.bias.shape == (3,)
    assert lin.weight.dtype == np.float32 and lin.bias.dtype == np.float32
    assert lin.weight.requires_grad and lin.bias.requires_grad
    bound = 1 / math.sqrt(5)
    w = tl.to_numpy(lin.weight.data)
    assert np.abs(w).max() <= bound and np.abs(tl.to_numpy(lin.bias.data)).max() <= bound
    x = np.random.default_rng(1).standard_normal((2, 4, 5)).astype(np.float32)
    y = lin(tl.Tensor(x))
    assert y.shape == (2, 4, 3)
    expected = x @ w.T + tl.to_numpy(lin.bias.data)
    np.testing.assert_allclose(tl.to_numpy(y.data), expected, rtol=1e-5, atol=1e-6)
    nobias = nn.Linear(5, 3, bias=False)
    assert nobias.bias is None
    assert [n for n, _ in nobias.named_parameters()] == ["weight"]
    np.testing.assert_allclose(
        tl.to_numpy(nobias(tl.Tensor(x)).data), x @ tl.to_numpy(nobias.weight.data).T, rtol=1e-5, atol=1e-6
    )


def test_linear_kaiming_uniform_bound_is_used():
    w = tl.to_numpy(nn.Linear(400, 300).weight.data)
    bound = 1 / math.sqrt(400)
    assert np.abs(w).max() <= bound
    assert np.abs(w).max() > 0.99 * bound  # uniform over the whole range
    assert abs(w.std() - bound / math.sqrt(3)) < 0.02 * bound


def test_linear_bad_sizes_and_bad_input():
    with pytest.raises(ValueError, match="in_features=0"):
        nn.Linear(0, 3)
    with pytest.raises(ValueError, match="out_features=-1"):
        nn.Linear(3, -1)
    lin = nn.Linear(64, 128)
    with pytest.raises(ValueError, match="63"):
        lin(tl.Tensor(np.zeros((2, 63), np.float32)))


def test_layers_seeded_init_is_reproducible():
    tl.manual_seed(7)
    a = nn.Linear(4, 3)
    tl.manual_seed(7)
    b = nn.Linear(4, 3)
    c = nn.Linear(4, 3)
    np.testing.assert_array_equal(tl.to_numpy(a.weight.data), tl.to_numpy(b.weight.data))
    assert not np.array_equal(tl.to_numpy(b.weight.data), tl.to_numpy(c.weight.data))


def test_embedding_lookup(backend):
    emb = nn.Embedding(10, 4)
    assert emb.weight.shape == (10, 4)
    ids = np.array([[1, 3, 3], [9, 0, 1]])
    out = emb(ids)
    assert out.shape == (2, 3, 4)
    np.testing.assert_array_equal(tl.to_numpy(out.data), tl.to_numpy(emb.weight.data)[ids])
    # the gradient of a repeated id accumulates
    out.sum().backward()
    counts = np.bincount(ids.ravel(), minlength=10)[:, None] * np.ones((1, 4))
    np.testing.assert_array_equal(tl.to_numpy(emb.weight.grad), counts)


def test_layer_norm_and_rms_norm_values(backend):
    x = np.random.default_rng(2).standard_normal((3, 6)) * 3 + 1
    ln = randomize(nn.LayerNorm(6).astype(np.float64))
    w, b = tl.to_numpy(ln.weight.data), tl.to_numpy(ln.bias.data)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    expected = (x - mu) / np.sqrt(var + 1e-5) * w + b
    np.testing.assert_allclose(tl.to_numpy(ln(tl.Tensor(x)).data), expected, rtol=1e-10, atol=1e-12)

    fresh = nn.LayerNorm(6)
    np.testing.assert_array_equal(tl.to_numpy(fresh.weight.data), np.ones(6))
    np.testing.assert_array_equal(tl.to_numpy(fresh.bias.data), np.zeros(6))
    assert nn.LayerNorm(6, bias=False).bias is None

    rms = randomize(nn.RMSNorm(6, eps=1e-6).astype(np.float64))
    g = tl.to_numpy(rms.weight.data)
    expected = x / np.sqrt((x * x).mean(-1, keepdims=True) + 1e-6) * g
    np.testing.assert_allclose(tl.to_numpy(rms(tl.Tensor(x)).data), expected, rtol=1e-10, atol=1e-12)
    assert [n for n, _ in nn.RMSNorm(6).named_parameters()] == ["weight"]


def test_activations_values(backend):
    xs = np.linspace(-4, 4, 41)
    x = tl.Tensor(xs)
    np.testing.assert_allclose(tl.to_numpy(nn.ReLU()(x).data), np.maximum(xs, 0))
    np.testing.assert_allclose(tl.to_numpy(nn.SiLU()(x).data), xs / (1 + np.exp(-xs)), rtol=1e-12)
    np.testing.assert_allclose(tl.to_numpy(nn.Tanh()(x).data), np.tanh(xs), rtol=1e-12)
    tanh_gelu = 0.5 * xs * (1 + np.tanh(math.sqrt(2 / math.pi) * (xs + 0.044715 * xs**3)))
    np.testing.assert_allclose(tl.to_numpy(nn.GELU()(x).data), tanh_gelu, rtol=1e-12, atol=1e-15)
    from scipy.special import erf

    exact = 0.5 * xs * (1 + erf(xs / math.sqrt(2)))
    np.testing.assert_allclose(tl.to_numpy(nn.GELU("none")(x).data), exact, rtol=1e-10, atol=1e-14)
    assert nn.Identity()(x) is x


def test_dropout_train_and_eval():
    d = nn.Dropout(0.25)
    x = tl.Tensor(np.ones((200, 200), np.float32))
    y = tl.to_numpy(d(x).data)
    kept = y != 0
    assert abs(kept.mean() - 0.75) < 0.01
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # survivors are scaled by 1/(1-p)
    d.eval()
    assert not d.training
    np.testing.assert_array_equal(tl.to_numpy(d(x).data), np.ones((200, 200)))
    d.train()
    assert np.array_equal(tl.to_numpy(nn.Dropout(0.0)(x).data), np.ones((200, 200)))
    assert not tl.to_numpy(nn.Dropout(1.0)(x).data).any()
    # a fixed seed gives the same mask
    tl.manual_seed(3)
    a = tl.to_numpy(d(x).data)
    tl.manual_seed(3)
    b = tl.to_numpy(d(x).data)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, tl.to_numpy(d(x).data))
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="p must be in"):
            nn.Dropout(bad)


# ---------------------------------------------------------------------------------------------
# layers: gradients (each op is gradchecked in test_functional_properties.py; here, that the
# layers hand every parameter to those ops)


def test_gradcheck_sequential_through_all_parameters():
    seq = nn.Sequential(
        nn.Linear(4, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 3), nn.RMSNorm(3), nn.SiLU()
    )
    seq.astype(np.float64)
    randomize(seq, seed=9)
    params = seq.parameters()
    assert len(params) == 7 and all(p.dtype == np.float64 for p in params)
    x = f64(np.random.default_rng(10).standard_normal((2, 4)))
    assert check_grad(lambda x, *ps: seq(x), x, *params)


def test_gradcheck_catches_a_wrong_layer_gradient():
    """The layer checks above can fail: a layer whose backward is wrong is caught."""

    class BadScale(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = nn.Parameter(np.array([1.5, -0.5, 2.0]))

        def forward(self, x):
            y = x * self.weight.detach()  # the weight gets no gradient...
            return y + (self.weight * 0.0)  # ...but the output still depends on it

    m = BadScale()
    x = f64([[1.0, 2.0, 3.0]])
    with pytest.raises(tl.GradcheckError):
        tl.gradcheck(lambda x, w: m(x), [x, m.weight])


# ---------------------------------------------------------------------------------------------
# Module: registration and walking the tree


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.second = nn.Linear(2, 3)  # registered first although named "second"
        self.scale = nn.Parameter(np.ones(3, np.float32))
        self.first = nn.Linear(3, 2, bias=False)
        self.buffer = tl.Tensor(np.zeros(3, np.float32))  # a plain Tensor is not a parameter
        self.note = "hello"

    def forward(self, x):
        return self.first(self.second(x) * self.scale)


def test_registration_follows_assignment_order():
    m = Pair()
    assert [n for n, _ in m.named_parameters()] == ["scale", "second.weight", "second.bias", "first.weight"]
    assert [n for n, _ in m.named_children()] == ["second", "first"]
    assert [n for n, _ in m.named_modules()] == ["", "second", "first"]
    assert len(m.parameters()) == 4
    # re-assigning keeps the position
    m.second = nn.Linear(2, 3)
    assert [n for n, _ in m.named_children()] == ["second", "first"]
    m.scale = nn.Parameter(np.zeros(3, np.float32))
    assert [n for n, _ in m.named_parameters()][0] == "scale"
    np.testing.assert_array_equal(m.scale.data, np.zeros(3))
    # a parameter set to None disappears from the walk, but stays a parameter slot
    m.scale = None
    assert "scale" not in dict(m.named_parameters())
    with pytest.raises(TypeError, match="cannot assign ndarray to parameter 'scale'"):
        m.scale = np.ones(3)
    # deleting unregisters
    del m.first
    assert [n for n, _ in m.named_children()] == ["second"]
    assert [n for n, _ in m.named_parameters()] == ["second.weight", "second.bias"]


def test_module_without_super_init_is_a_clear_error():
    class Forgot(nn.Module):
        def __init__(self):
            self.lin = nn.Linear(2, 2)

    with pytest.raises(AttributeError, match=r"super\(\).__init__\(\)"):
        Forgot()


def test_base_module_forward_is_not_implemented():
    with pytest.raises(NotImplementedError, match="Module has no forward"):
        nn.Module()(1)


def tiny_gpt(tie=True, **kw):
    cfg = dict(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=8, tie_weights=tie)
    cfg.update(kw)
    return models.GPT(models.GPTConfig(**cfg))


def test_named_parameters_dotted_names_and_tied_weights():
    g = tiny_gpt(tie=True)
    names = [n for n, _ in g.named_parameters()]
    assert names[:2] == ["tok_emb.weight", "pos_emb.weight"]
    assert "blocks.0.attn.q_proj.weight" in names and "blocks.1.mlp.down_proj.bias" in names
    assert g.lm_head.weight is g.tok_emb.weight
    assert "lm_head.weight" not in names  # one Parameter, one name (the first)
    assert len(names) == len(set(names)) == len({id(p) for p in g.parameters()})
    assert names[-2:] == ["ln_f.weight", "ln_f.bias"]
    untied = tiny_gpt(tie=False)
    untied_names = [n for n, _ in untied.named_parameters()]
    assert untied_names[-1] == "lm_head.weight"
    assert len(untied_names) == len(names) + 1
    assert g.num_parameters() == untied.num_parameters() - 11 * 8
    # prefix
    assert next(iter(g.named_parameters(prefix="model")))[0] == "model.tok_emb.weight"


def test_named_modules_lists_each_module_once_in_tree_order():
    shared = nn.Linear(2, 2)
    seq = nn.Sequential(shared, nn.ReLU(), shared)
    assert [n for n, _ in seq.named_modules()] == ["", "0", "1"]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    g = tiny_gpt()
    names = [n for n, _ in g.named_modules()]
    assert names[:5] == ["", "tok_emb", "pos_emb", "drop", "blocks"]
    assert names.index("blocks.0") < names.index("blocks.0.ln_1") < names.index("blocks.0.attn.q_proj")
    assert names.index("blocks.0.mlp.down_proj") < names.index("blocks.1") < names.index("ln_f")
    assert names[-1] == "lm_head"
    assert len(names) == len(set(names))
    assert [m for _, m in g.named_modules()] == list(g.modules())


def test_train_eval_recurse_and_return_self():
    g = tiny_gpt(dropout=0.1)
    assert all(m.training for m in g.modules())
    assert g.eval() is g
    assert not any(m.training for m in g.modules())
    assert g.train() is g
    assert all(m.training for m in g.modules())
    g.blocks[1].eval()  # a sub-tree only
    assert not g.blocks[1].attn.resid_drop.training and g.blocks[0].attn.resid_drop.training
    g.train(False)
    assert not any(m.training for m in g.modules())


def test_zero_grad_and_requires_grad_():
    m = Pair()
    x = tl.Tensor(np.ones((2, 2), np.float32))
    m(x).sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    m.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    assert m.requires_grad_(False) is m
    assert not any(p.requires_grad for p in m.parameters())
    out = m(x).sum()
    with pytest.raises(RuntimeError):
        out.backward()  # nothing in the graph requires grad
    assert all(p.grad is None for p in m.parameters())
    m.second.requires_grad_(True)
    m(x).sum().backward()
    assert m.second.weight.grad is not None and m.first.weight.grad is None


def test_astype_casts_parameters_and_drops_grads():
    m = Pair()
    m(tl.Tensor(np.ones((1, 2), np.float32))).sum().backward()
    before = {k: v.copy() for k, v in m.state_dict().items()}
    assert m.astype(np.float64) is m
    for k, p in m.named_parameters():
        assert p.dtype == np.float64 and p.grad is None
        np.testing.assert_array_equal(p.data, before[k])


def test_apply_visits_children_first():
    g = tiny_gpt(n_layer=1)
    seen = []
    assert g.apply(lambda m: seen.append(m)) is g
    assert seen[-1] is g
    assert seen.index(g.blocks[0].attn.q_proj) < seen.index(g.blocks[0].attn) < seen.index(g.blocks[0])
    assert len(seen) == len(list(g.modules()))


def test_get_submodule_and_set_submodule():
    g = tiny_gpt()
    assert g.get_submodule("") is g
    assert g.get_submodule("blocks.0.attn.q_proj") is g.blocks[0].attn.q_proj
    assert g.get_submodule("blocks.1") is g.blocks[1]
    with pytest.raises(AttributeError, match=r"no sub-module '7'.*'blocks\.7\.attn'"):
        g.get_submodule("blocks.7.attn")
    with pytest.raises(AttributeError, match="no sub-module 'weight'"):
        g.get_submodule("blocks.0.attn.q_proj.weight")  # a parameter, not a module
    with pytest.raises(AttributeError, match="no sub-module 'nope'"):
        g.get_submodule("nope")
    new = nn.Linear(8, 8)
    g.set_submodule("blocks.0.attn.v_proj", new)
    assert g.blocks[0].attn.v_proj is new
    assert dict(g.named_parameters())["blocks.0.attn.v_proj.weight"] is new.weight
    # the replaced module keeps its place in the order
    assert [n for n, _ in g.blocks[0].attn.named_children()][:4] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    with pytest.raises(AttributeError, match="no sub-module 'x_proj'"):
        g.set_submodule("blocks.0.attn.x_proj", nn.Linear(8, 8))
    with pytest.raises(AttributeError, match="no sub-module '5'"):
        g.set_submodule("blocks.5.attn.q_proj", nn.Linear(8, 8))
    assert not hasattr(g.blocks[0].attn, "x_proj")


def test_sequential():
    tl.manual_seed(1)
    a, b = nn.Linear(3, 4), nn.Linear(4, 2)
    seq = nn.Sequential(a, nn.Tanh(), b)
    assert len(seq) == 3
    assert seq[0] is a and seq[2] is b and seq[-1] is b
    assert [type(m).__name__ for m in seq] == ["Linear", "Tanh", "Linear"]
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = tl.Tensor(np.random.default_rng(0).standard_normal((5, 3)).astype(np.float32))
    np.testing.assert_allclose(seq(x).data, b(a(x).tanh()).data, rtol=1e-6)
    assert nn.Sequential()(x) is x


def test_module_list():
    ml = nn.ModuleList([nn.Linear(2, 2), nn.ReLU()])
    assert ml.append(nn.Linear(2, 3)) is ml
    assert len(ml) == 3
    assert [n for n, _ in ml.named_children()] == ["0", "1", "2"]
    assert isinstance(ml[2], nn.Linear) and ml[-1] is ml[2]
    assert [type(m).__name__ for m in ml] == ["Linear", "ReLU", "Linear"]
    assert [n for n, _ in ml.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias"]
    with pytest.raises(TypeError, match="ModuleList holds Modules, got int"):
        ml.append(3)
    with pytest.raises(IndexError):
        ml[5]
    with pytest.raises(NotImplementedError):
        ml(tl.Tensor(np.ones(2)))


def test_module_dict():
    md = nn.ModuleDict({"enc": nn.Linear(2, 3), "dec": nn.Linear(3, 2)})
    assert md.keys() == ["enc", "dec"] and list(md) == ["enc", "dec"] and len(md) == 2
    assert "enc" in md and "nope" not in md
    assert isinstance(md["dec"], nn.Linear)
    assert [n for n, _ in md.items()] == ["enc", "dec"]
    assert [n for n, _ in md.named_parameters()] == ["enc.weight", "enc.bias", "dec.weight", "dec.bias"]
    md["extra"] = nn.ReLU()
    assert md.keys() == ["enc", "dec", "extra"]
    del md["enc"]
    assert md.keys() == ["dec", "extra"]
    assert [n for n, _ in md.named_parameters()] == ["dec.weight", "dec.bias"]
    with pytest.raises(KeyError, match=r"no module named 'enc' \(have: dec, extra\)"):
        md["enc"]
    with pytest.raises(KeyError, match="no module named 'enc'"):
        del md["enc"]
    for bad in ("a.b", "1x", "", 3):
        with pytest.raises(ValueError, match="identifiers without dots"):
            md[bad] = nn.ReLU()
    with pytest.raises(TypeError, match="ModuleDict holds Modules, got str"):
        md["x"] = "not a module"
    assert md.keys() == ["dec", "extra"]


def test_repr_shows_the_tree():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ModuleList([nn.Dropout(0.1), nn.LayerNorm(3)]), nn.ReLU())
    assert repr(seq) == (
        "Sequential(\n"
        "  (0): Linear(in_features=2, out_features=3, bias=True)\n"
        "  (1): ModuleList(\n"
        "    (0): Dropout(p=0.1)\n"
        "    (1): LayerNorm(3, eps=1e-05)\n"
        "  )\n"
        "  (2): ReLU()\n"
        ")"
    )
    assert repr(nn.Embedding(5, 2)) == "Embedding(5, 2)"
    r = repr(tiny_gpt())
    assert "(q_proj): Linear(in_features=8, out_features=8, bias=True)" in r
    assert "(lm_head): Linear(in_features=8, out_features=11, bias=False)" in r
    assert repr(nn.Parameter(np.zeros(2, np.float32))).startswith("Parameter")


def test_parameter_defaults():
    p = nn.Parameter(np.zeros((2, 3), np.float32))
    assert isinstance(p, tl.Tensor) and p.requires_grad and p.grad is None
    assert not nn.Parameter(np.zeros(2), requires_grad=False).requires_grad
    assert nn.Parameter([1, 2], dtype=np.float64).dtype == np.float64


# ---------------------------------------------------------------------------------------------
# state dicts


def test_state_dict_holds_the_parameter_arrays_in_order(backend):
    m = Pair()
    sd = m.state_dict()
    assert list(sd) == [n for n, _ in m.named_parameters()]
    for n, p in m.named_parameters():
        assert sd[n] is p.data  # the arrays themselves, not copies
    g = tiny_gpt()
    assert "lm_head.weight" not in g.state_dict()
    assert "lm_head.weight" in tiny_gpt(tie=False).state_dict()


def test_state_dict_round_trip_copies(backend):
    tl.manual_seed(1)
    src = tiny_gpt()
    tl.manual_seed(2)
    dst = tiny_gpt()
    assert not np.array_equal(tl.to_numpy(src.tok_emb.weight.data), tl.to_numpy(dst.tok_emb.weight.data))
    sd = {k: v.copy() for k, v in src.state_dict().items()}
    result = dst.load_state_dict(sd)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert isinstance(result, nn.IncompatibleKeys)
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(tl.to_numpy(v), tl.to_numpy(sd[k]))
        assert v is not sd[k]
    # the tie survives loading (one Parameter, its data replaced)
    assert dst.lm_head.weight is dst.tok_emb.weight
    # mutating the source afterwards does not reach the model
    for v in sd.values():
        v += 1.0
    for k, v in dst.state_dict().items():
        np.testing.assert_array_equal(tl.to_numpy(v), tl.to_numpy(src.state_dict()[k]))
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(tl.to_numpy(src(ids).data), tl.to_numpy(dst(ids).data))


def test_load_state_dict_from_the_live_state_dict_does_not_alias():
    a, b = Pair(), Pair()
    b.load_state_dict(a.state_dict())  # the source's own arrays, not copies
    a.second.weight.data += 5.0
    assert not np.allclose(a.second.weight.data, b.second.weight.data)


def test_load_state_dict_accepts_tensors_casts_dtype_and_drops_grads(backend):
    m = Pair()
    m(tl.Tensor(np.ones((1, 2), np.float32))).sum().backward()
    r = np.random.default_rng(0)
    sd = {k: tl.Tensor(r.standard_normal(v.shape)) for k, v in m.state_dict().items()}  # float64 Tensors
    sd["scale"] = r.standard_normal(3).tolist()  # a plain list works too
    m.load_state_dict(sd)
    for k, p in m.named_parameters():
        assert p.dtype == np.float32 and p.grad is None
        given = sd[k].data if isinstance(sd[k], tl.Tensor) else np.array(sd[k])
        np.testing.assert_allclose(tl.to_numpy(p.data), tl.to_numpy(given).astype(np.float32))
        assert type(p.data) is type(tl.xp().zeros(1))  # on the module's backend


def test_load_state_dict_strict_lists_every_problem_and_changes_nothing():
    tl.manual_seed(3)
    m = tiny_gpt()
    before = params_snapshot(m)
    good = {k: np.zeros(v.shape, np.float32) for k, v in m.state_dict().items()}
    sd = dict(good)
    del sd["pos_emb.weight"]
    del sd["blocks.1.ln_2.bias"]
    sd["blocks.0.attn.q_proj.weight"] = np.zeros((8, 9), np.float32)
    sd["ln_f.weight"] = np.zeros(7, np.float32)
    sd["head.weight"] = np.zeros((3, 4), np.float32)
    sd["blocks.0.attn.x_proj.bias"] = tl.Tensor(np.zeros(5, np.float32))
    with pytest.raises(nn.StateDictError) as info:
        m.load_state_dict(sd)
    msg = str(info.value)
    assert "6 problem(s), nothing was loaded" in msg
    assert "missing key 'pos_emb.weight' (expected shape (8, 8))" in msg
    assert "missing key 'blocks.1.ln_2.bias' (expected shape (8,))" in msg
    assert "unexpected key 'head.weight' (given shape (3, 4))" in msg
    assert "unexpected key 'blocks.0.attn.x_proj.bias' (given shape (5,))" in msg
    assert "'blocks.0.attn.q_proj.weight': expected shape (8, 8), given (8, 9)" in msg
    assert "'ln_f.weight': expected shape (8,), given (7,)" in msg
    assert isinstance(info.value, ValueError)
    assert_same_params(m, before)  # all or nothing: the valid keys were not loaded either

    # only a shape problem: still raises and still changes nothing, strict or not
    sd = dict(good)
    sd["tok_emb.weight"] = np.zeros((11, 9), np.float32)
    for strict in (True, False):
        with pytest.raises(nn.StateDictError, match=r"1 problem\(s\).*\n.*'tok_emb.weight'"):
            m.load_state_dict(sd, strict=strict)
        assert_same_params(m, before)


def test_load_state_dict_non_strict_reports_missing_and_unexpected():
    tl.manual_seed(4)
    m = Pair()
    before = params_snapshot(m)
    sd = {"second.weight": np.full((3, 2), 2.0, np.float32), "extra.weight": np.zeros(2, np.float32)}
    result = m.load_state_dict(sd, strict=False)
    assert result.missing_keys == ["scale", "second.bias", "first.weight"]
    assert result.unexpected_keys == ["extra.weight"]
    np.testing.assert_array_equal(m.second.weight.data, np.full((3, 2), 2.0))
    for k in result.missing_keys:
        np.testing.assert_array_equal(tl.to_numpy(m.state_dict()[k]), before[k])
    with pytest.raises(nn.StateDictError, match="missing key 'scale'"):
        m.load_state_dict(sd)  # strict by default


def test_load_state_dict_reports_unconvertible_values():
    m = Pair()
    before = params_snapshot(m)
    sd = {k: v.copy() for k, v in m.state_dict().items()}
    sd["scale"] = np.array(["a", "b", "c"])
    with pytest.raises(nn.StateDictError, match="'scale': cannot convert to float32"):
        m.load_state_dict(sd)
    assert_same_params(m, before)


def test_assigning_a_non_module_to_a_sub_module_slot_is_refused():
    seq = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    with pytest.raises(TypeError, match="cannot assign int to sub-module '0'"):
        setattr(seq, "0", 3)
    md = nn.ModuleDict({"a": nn.Linear(2, 2)})
    with pytest.raises(TypeError, match="cannot assign int to sub-module 'a'"):
        md.set_submodule("a", 5)
    # the tree is intact afterwards
    assert [n for n, _ in seq.named_parameters()] == ["0.weight", "0.bias"]
    assert isinstance(md["a"], nn.Linear)
    # None empties the slot, a Parameter turns it into a parameter
    seq.__setattr__("1", None)
    assert [n for n, _ in seq.named_children()] == ["0"]
    m = Pair()
    m.first = nn.Parameter(np.ones(2, np.float32))
    assert [n for n, _ in m.named_children()] == ["second"]
    assert "first" in dict(m.named_parameters())


def test_load_state_dict_assign_uses_the_arrays_without_copying():
    layer = nn.Linear(3, 2)
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    b64 = np.zeros(2)  # float64: must be converted, so it cannot be shared
    layer.load_state_dict({"weight": w, "bias": b64}, assign=True)
    assert layer.weight.data is w
    assert layer.bias.dtype == np.float32 and layer.bias.data is not b64
    layer.load_state_dict({"weight": w, "bias": b64})  # the default copies
    assert layer.weight.data is not w
