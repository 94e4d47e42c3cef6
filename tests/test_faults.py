"""Bad numbers, bad dtypes and failing writes: refused where they enter, naming what was expected."""

import errno
import re

import numpy as np
import pytest

import tinylora as tl
from tinylora import io, lora, models, nn
from tinylora.nn.checks import flag, integer, number

BAD = [float("nan"), float("inf"), -float("inf"), "16", True, None, [1.0]]


@pytest.mark.parametrize("value", BAD, ids=repr)
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda v: lora.LoRAConfig(alpha=v), "LoRAConfig: alpha"),
        (lambda v: lora.LoRAConfig(dropout=v), "LoRAConfig: dropout"),
        (lambda v: lora.LoRALinear(nn.Linear(4, 4), r=2, alpha=v), "LoRAConfig: alpha"),
        (lambda v: nn.Dropout(v), "Dropout: p"),
        (lambda v: nn.LayerNorm(4, eps=v), "LayerNorm: eps"),
        (lambda v: nn.RMSNorm(4, eps=v), "RMSNorm: eps"),
    ],
)
def test_non_finite_or_mistyped_rates_and_scales_are_refused(make, field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number.*got {re.escape(repr(value))}"):
        make(value)


@pytest.mark.parametrize("value", [2.0, True, "8", None, np.float64(3)], ids=repr)
@pytest.mark.parametrize(
    "make, field",
    [
        (lambda v: lora.LoRAConfig(r=v), "LoRAConfig: r"),
        (lambda v: nn.Linear(v, 3), "Linear: in_features"),
        (lambda v: nn.Linear(3, v), "Linear: out_features"),
        (lambda v: nn.Embedding(v, 3), "Embedding: num_embeddings"),
        (lambda v: nn.Embedding(3, v), "Embedding: embedding_dim"),
        (lambda v: nn.LayerNorm(v), "LayerNorm: dim"),
    ],
)
def test_sizes_must_be_integers(make, field, value):
    with pytest.raises(ValueError, match=f"{field} must be an integer.*got {re.escape(repr(value))}"):
        make(value)


def test_numpy_numbers_count_as_numbers_and_become_python_numbers():
    cfg = lora.LoRAConfig(r=np.int64(4), alpha=np.float32(8.0), dropout=np.float64(0.1))
    assert (cfg.r, cfg.alpha, cfg.dropout) == (4, 8.0, pytest.approx(0.1))
    assert type(cfg.r) is int and type(cfg.alpha) is float  # JSON-safe in adapter_config.json
    assert cfg.scaling == 2.0
    assert nn.Linear(np.int32(3), np.int64(2)).weight.shape == (2, 3)
    assert nn.Dropout(np.float32(0.5)).p == 0.5


def test_switches_are_bools_only():
    with pytest.raises(ValueError, match="LoRAConfig: rslora must be True or False, got 'no'"):
        lora.LoRAConfig(rslora="no")
    with pytest.raises(ValueError, match="Linear: bias must be True or False, got 'False'"):
        nn.Linear(2, 2, bias="False")
    assert lora.LoRAConfig(rslora=np.bool_(True)).rslora is True


def test_gelu_refuses_an_unknown_form():
    with pytest.raises(ValueError, match="approximate must be 'tanh' or 'none', got 'erf'"):
        nn.GELU("erf")


def test_the_checks_say_the_range():
    assert number("x", "p", 1, 0, 1) == 1 and type(number("x", "p", 1, 0, 1)) is int
    with pytest.raises(ValueError, match=r"x: p must be in \(0, 1\), got 1"):
        number("x", "p", 1, 0, 1, above=True, below=True)
    with pytest.raises(ValueError, match="x: lr must be <= 2, got 3"):
        number("x", "lr", 3, high=2)
    with pytest.raises(ValueError, match="x: n must be an integer, got 1.5"):
        integer("x", "n", 1.5)
    with pytest.raises(ValueError, match="x: on must be True or False, got 1"):
        flag("x", "on", 1)


# ---------------------------------------------------------------------------------------------
# Tensor dtypes


@pytest.mark.parametrize(
    "data, dtype",
    [
        (np.array(["a", "b"]), "<U1"),
        (np.array([1.0, None], dtype=object), "object"),
        (["1.5", "2"], "<U3"),
        ([1, "x"], "<U21"),
        (np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
    ],
)
def test_tensor_refuses_arrays_that_are_not_numbers_naming_the_dtype(data, dtype):
    with pytest.raises(TypeError, match=f"Tensor: expected numbers .* got dtype {re.escape(dtype)}"):
        tl.Tensor(data)


def test_tensor_refuses_a_non_numeric_dtype_argument_and_keeps_numbers():
    with pytest.raises(TypeError, match="got dtype <U3"):
        tl.Tensor(np.ones(2), dtype="U3")
    assert tl.Tensor([True, False]).dtype == np.float32
    assert tl.Tensor(np.array([1, 2])).dtype == np.int64
    assert tl.Tensor(np.array([True])).dtype == np.bool_


# ---------------------------------------------------------------------------------------------
# library writes


def _failing_writer(err):
    def save_file(arrays, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise OSError(err, "simulated " + errno.errorcode[err])

    return save_file


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_a_failing_write_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, err):
    path = tmp_path / "w.safetensors"
    io.save_weights({"a": np.ones(3, np.float32)}, path)
    before = path.read_bytes()
    st = io._safetensors_numpy()
    monkeypatch.setattr(st, "save_file", _failing_writer(err))
    with pytest.raises(OSError) as info:
        io.save_weights({"a": np.zeros(3, np.float32)}, path)
    assert info.value.errno == err and info.value.filename == str(path)
    assert str(path) in str(info.value)
    assert path.read_bytes() == before  # the old file is intact
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]  # no temporary left


def test_module_save_and_save_adapter_name_the_path_on_failure(tmp_path, monkeypatch):
    tl.manual_seed(0)
    model = models.MLP([4, 3, 2])
    lora.apply_lora(model, lora.LoRAConfig(r=1, target_modules=("fc1",)))
    lora.save_adapter(model, tmp_path / "ad")
    before = {p.name: p.read_bytes() for p in (tmp_path / "ad").iterdir()}
    monkeypatch.setattr(io._safetensors_numpy(), "save_file", _failing_writer(errno.ENOSPC))
    with pytest.raises(OSError, match="No space left|simulated") as info:
        model.save(tmp_path / "m.safetensors")
    assert info.value.filename == str(tmp_path / "m.safetensors")
    with pytest.raises(OSError) as info:
        lora.save_adapter(model, tmp_path / "ad")
    assert str(tmp_path / "ad") in str(info.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "ad").iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ad"]


def test_a_folder_that_cannot_be_created_is_named(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError) as info:
        io.save_weights({"a": np.ones(1, np.float32)}, blocker / "sub" / "w.safetensors")
    assert str(blocker / "sub") in str(info.value)
    assert blocker.read_text() == "x"


def test_check_writable_finds_out_before_long_work(tmp_path):
    assert io.check_writable(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert list(tmp_path.iterdir()) == []  # nothing created, nothing left
    (tmp_path / "f").write_text("x")
    with pytest.raises(OSError) as info:
        io.check_writable(tmp_path / "f")
    assert str(tmp_path / "f") in str(info.value)


# ---------------------------------------------------------------------------------------------
# tied weights: adapting lm_head never changes tok_emb


def _tied_gpt():
    tl.manual_seed(0)
    cfg = models.GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8, tie_weights=True)
    model = models.GPT(cfg)
    assert model.lm_head.weight is model.tok_emb.weight
    return model


IDS = np.arange(12).reshape(2, 6) % 11


def _snapshot(model):
    return {k: v.copy() for k, v in model.state_dict().items()}


def test_an_unmerged_adapter_on_a_tied_lm_head_changes_only_the_output_path():
    model = _tied_gpt()
    emb = model.tok_emb.weight.data.copy()
    with tl.no_grad():
        h = model.ln_f(model.blocks[0](model.tok_emb(IDS) + model.pos_emb.weight[:6]))  # (2, 6, 8)
    lora.apply_lora(model, lora.LoRAConfig(r=2, alpha=4, target_modules=("lm_head",)))
    layer = model.lm_head
    assert layer.tied_to == ("tok_emb.weight",)
    layer.lora_B.data = np.random.default_rng(1).standard_normal(layer.lora_B.shape).astype(np.float32)
    with tl.no_grad():
        logits = model(IDS).numpy()
    expected = h.numpy() @ (emb + layer.delta()).T  # the adapter acts on lm_head's input only
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(model.tok_emb.weight.data, emb)


def test_pissa_on_a_tied_weight_is_refused_and_changes_nothing():
    model = _tied_gpt()
    before = _snapshot(model)
    with pytest.raises(RuntimeError, match="a PiSSA init would change the weight of lm_head.*tok_emb.weight"):
        lora.apply_lora(model, lora.LoRAConfig(r=2, init="pissa", target_modules=("lm_head", "q_proj")))
    assert lora.lora_layers(model) == [] and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    lora.apply_lora(model, lora.LoRAConfig(r=2, target_modules=("lm_head",)))
    with pytest.raises(RuntimeError, match="PiSSA init would change .* untie first"):
        lora.add_adapter(model, "p", lora.LoRAConfig(r=2, init="pissa", target_modules=("lm_head",)))
    with pytest.raises(RuntimeError, match="tied weights"):
        model.lm_head.add_adapter("p", lora.LoRAConfig(r=2, init="pissa", target_modules=("lm_head",)))
    np.testing.assert_array_equal(model.tok_emb.weight.data, before["tok_emb.weight"])


def test_merging_into_a_tied_weight_is_refused_before_anything_merges():
    model = _tied_gpt()
    lora.apply_lora(model, lora.LoRAConfig(r=2, target_modules=("q_proj", "lm_head")))
    for _, layer in lora.lora_layers(model):
        layer.lora_B.data = np.ones(layer.lora_B.shape, np.float32)
    before = _snapshot(model)
    for merge in (lora.merge_lora, lora.merge_and_unload):
        with pytest.raises(RuntimeError, match="merging would change the weight of lm_head.*tok_emb.weight"):
            merge(model)
        assert all(layer.merged is None for _, layer in lora.lora_layers(model))
        for k, v in model.state_dict().items():
            np.testing.assert_array_equal(v, before[k])
    with pytest.raises(RuntimeError, match="untie first"):
        model.lm_head.merge()


def test_an_untied_copy_merges_and_leaves_the_embedding_alone():
    model = _tied_gpt()
    model.lm_head.weight = nn.Parameter(model.lm_head.weight.data.copy())  # untie, as the message says
    emb = model.tok_emb.weight.data.copy()
    lora.apply_lora(model, lora.LoRAConfig(r=2, init="pissa", target_modules=("lm_head",)))
    model.lm_head.lora_B.data = model.lm_head.lora_B.data + 0.5
    with tl.no_grad():
        adapted = model(IDS).numpy()
        lora.merge_lora(model)
        merged = model(IDS).numpy()
    np.testing.assert_allclose(merged, adapted, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(model.tok_emb.weight.data, emb)


def test_untying_after_apply_lora_allows_merging():
    model = _tied_gpt()
    lora.apply_lora(model, lora.LoRAConfig(r=2, target_modules=("lm_head",)))
    model.lm_head.base.weight = nn.Parameter(model.lm_head.base.weight.data.copy())
    lora.merge_lora(model)
    assert model.lm_head.merged == "default" and model.lm_head.tied_to == ()


def test_lora_on_a_tied_embedding_never_changes_the_head():
    model = _tied_gpt()
    lora.apply_lora(model, lora.LoRAConfig(r=2, target_modules=("tok_emb",)))
    assert model.tok_emb.tied_to == ("lm_head.weight",)
    ad = model.tok_emb.adapters["default"]
    ad.lora_embedding_A.data = np.ones(ad.lora_embedding_A.shape, np.float32)  # (PEFT starts A at 0)
    head = model.lm_head.weight.data.copy()
    with pytest.raises(RuntimeError, match="merging would change the weight of tok_emb.*lm_head.weight"):
        lora.merge_lora(model)
    with tl.no_grad():
        model(IDS)
    np.testing.assert_array_equal(model.lm_head.weight.data, head)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), "0.1", True], ids=repr)
def test_vera_settings_are_checked_too(value):
    with pytest.raises(
        ValueError, match=f"VeRAConfig: d_initial must be a finite number, got {re.escape(repr(value))}"
    ):
        lora.VeRAConfig(r=2, d_initial=value)
    assert lora.VeRAConfig(r=np.int64(2), projection_prng_key=np.int32(3)).r == 2


def test_a_non_finite_loraplus_ratio_is_refused_by_the_optimizer():
    tl.manual_seed(0)
    model = models.MLP([4, 3, 2])
    lora.apply_lora(model, lora.LoRAConfig(r=1, target_modules=("fc1",)))
    with pytest.raises(ValueError, match="lr must be a finite number"):
        lora.create_loraplus_optimizer(model, tl.optim.AdamW, 1e-3, loraplus_lr_ratio=float("nan"))


@pytest.mark.parametrize(
    "field, value",
    [
        ("vocab_size", "65"),
        ("block_size", 64.5),
        ("n_layer", 0),
        ("n_head", True),
        ("n_embd", float("nan")),
        ("dropout", float("nan")),
        ("dropout", 1.0),
        ("dropout", "0.1"),
        ("tie_weights", "yes"),
    ],
)
def test_gpt_config_refuses_bad_sizes_naming_the_field(field, value):
    kwargs = dict(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    kwargs[field] = value
    with pytest.raises(ValueError, match=rf"GPTConfig: {field} must be .*got {re.escape(repr(value))}"):
        models.GPTConfig(**kwargs)


def test_gpt_config_takes_numpy_integers_as_plain_ints():
    cfg = models.GPTConfig(vocab_size=np.int64(11), block_size=np.int32(8), n_layer=1, n_head=2, n_embd=8)
    assert type(cfg.vocab_size) is int and type(cfg.block_size) is int
    assert cfg.to_dict()["vocab_size"] == 11
