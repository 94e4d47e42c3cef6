"""Adapter files: PEFT's layout, round trips, fingerprints, and all-or-nothing loading of bad files."""

import json
import os

import numpy as np
import pytest
from lora_helpers import fill
from safetensors.numpy import load_file, save_file

import tinylora as tl
from tinylora import lora, models, optim
from tinylora.io import read_metadata
from tinylora.lora import AdapterFileError, LoRAConfig

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)
CONFIG_NAME, WEIGHTS_NAME = "adapter_config.json", "adapter_model.safetensors"
CFG = dict(r=2, alpha=4, target_modules=("q_proj", "v_proj"))
P = "base_model.model."  # PEFT's prefix of every key


def tiny_gpt(seed=0, **kw):
    tl.manual_seed(seed)
    return models.GPT(models.GPTConfig(**dict(TINY, **kw)))


def token_ids(seed=0):
    return np.random.default_rng(seed).integers(0, TINY["vocab_size"], size=(2, 8))


def logits(model, ids=None):
    return model(token_ids() if ids is None else ids).numpy().copy()


def trained(config=None, seed=0, **gpt_kw):
    """A tiny GPT with a 'trained' adapter."""
    return fill(lora.apply_lora(tiny_gpt(seed, **gpt_kw), config or LoRAConfig(**CFG)))


def snapshot(model):
    return {
        "modules": [(n, type(m).__name__) for n, m in model.named_modules()],
        "params": {n: (p.numpy().copy(), p.requires_grad, p.dtype) for n, p in model.named_parameters()},
        "adapters": lora.adapter_names(model),
        "active": lora.active_adapter(model),
        "merged": [layer.merged for _, layer in lora.lora_layers(model)],
    }


def assert_unchanged(model, before):
    now = snapshot(model)
    assert now["modules"] == before["modules"]
    assert list(now["params"]) == list(before["params"])
    for n, (data, flag, dtype) in before["params"].items():
        data2, flag2, dtype2 = now["params"][n]
        assert np.array_equal(data, data2) and flag == flag2 and dtype == dtype2, n
    assert (now["adapters"], now["active"], now["merged"]) == (
        before["adapters"],
        before["active"],
        before["merged"],
    )


@pytest.fixture
def saved(tmp_path):
    """(trained model, its adapter directory, what save_adapter returned)."""
    model = trained()
    directory = tmp_path / "adapter"
    info = lora.save_adapter(model, directory)
    return model, directory, info


def rewrite_config(directory, **changes):
    meta = json.loads((directory / CONFIG_NAME).read_text())
    meta.update(changes)
    for k, v in changes.items():
        if v is None:
            del meta[k]
    (directory / CONFIG_NAME).write_text(json.dumps(meta))


def rewrite_weights(directory, tensors):
    """Replace the weights file (as PEFT would write it: no tinylora metadata), so only the contents are wrong."""
    save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt"})


def targets(kind):
    """A model to load into: a plain base, or one already adapted with the same config."""
    return tiny_gpt() if kind == "plain" else lora.apply_lora(tiny_gpt(), LoRAConfig(**CFG))


# ============================================================== layout


def test_files_follow_peft_layout(saved):
    model, directory, info = saved
    assert sorted(os.listdir(directory)) == [CONFIG_NAME, WEIGHTS_NAME]
    meta = json.loads((directory / CONFIG_NAME).read_text())
    for key in ("peft_type", "r", "lora_alpha", "lora_dropout", "target_modules", "use_rslora"):
        assert key in meta, key
    assert not any(k.startswith("tinylora") or k in ("fingerprint", "init", "rslora") for k in meta)
    assert meta["r"] == 2 and meta["lora_alpha"] == 4 and meta["lora_dropout"] == 0.0
    assert (
        meta["target_modules"] == ["q_proj", "v_proj"]
        and meta["init_lora_weights"] is True
        and meta["use_rslora"] is False
    )
    info = read_metadata(directory / WEIGHTS_NAME)  # what only tinylora reads lives here
    assert info["format"] == "pt" and info["tinylora_version"] == tl.__version__
    fp = info["tinylora_fingerprint"]["modules"]
    assert "blocks.0.attn.q_proj.weight" in fp and fp["blocks.0.attn.q_proj.weight"]["shape"] == [16, 16]
    assert not any("lora_" in k or ".base." in k for k in fp)
    tensors = load_file(str(directory / WEIGHTS_NAME))
    layers = dict(lora.lora_layers(model))
    assert set(tensors) == {f"{P}{p}.lora_{ab}.weight" for p in layers for ab in "AB"}
    assert len(layers) == 4
    for path, layer in layers.items():
        assert np.array_equal(tensors[f"{P}{path}.lora_A.weight"], layer.lora_A.numpy())
        assert np.array_equal(tensors[f"{P}{path}.lora_B.weight"], layer.lora_B.numpy())
        assert tensors[f"{P}{path}.lora_A.weight"].dtype == np.float32


def test_file_size_is_payload_plus_a_small_header_and_save_reports_it(saved):
    model, directory, info = saved
    n_params = lora.count_parameters(model)["trainable"]
    assert n_params == 4 * 2 * (16 + 16)
    raw = (directory / WEIGHTS_NAME).read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert len(raw) == n_params * 4 + 8 + header
    assert header < 8192  # the key names, the base's fingerprint (a sha256 per weight) and the version
    assert info["parameters"] == n_params and info["payload_bytes"] == n_params * 4
    assert info["weights_bytes"] == len(raw) and info["header_bytes"] == 8 + header
    assert info["config_bytes"] == (directory / CONFIG_NAME).stat().st_size
    assert info["adapter_name"] == "default" and info["directory"] == str(directory)


# ============================================================== round trips


@pytest.mark.parametrize("kind", ["plain", "adapted"])
def test_round_trip_gives_equal_outputs(saved, kind):
    model, directory, _ = saved
    fresh = targets(kind)
    assert not np.array_equal(logits(fresh), logits(model))
    assert lora.load_adapter(fresh, directory) is fresh
    assert np.array_equal(logits(fresh), logits(model))
    assert lora.adapter_names(fresh) == ["default"] and lora.active_adapter(fresh) == "default"
    trainable = {n for n, p in fresh.named_parameters() if p.requires_grad}
    assert trainable == {n for n, p in model.named_parameters() if p.requires_grad}
    for n, p in fresh.named_parameters():
        assert p.requires_grad == (".adapters." in n)


def test_round_trip_keeps_the_config(tmp_path):
    cfg = LoRAConfig(
        r=3, alpha=5, dropout=0.1, target_modules=r".*\.(k|o)_proj", init="gaussian", rslora=True
    )
    model = trained(cfg)
    lora.save_adapter(model, tmp_path / "a")
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "a")
    layer = fresh.blocks[1].attn.o_proj
    assert layer.adapters["default"].config == cfg.settings_for("blocks.1.attn.o_proj")
    assert layer.scaling == 5 / 3**0.5
    model.eval(), fresh.eval()
    assert np.array_equal(logits(fresh), logits(model))


def test_pissa_adapter_round_trips(tmp_path):
    cfg = LoRAConfig(r=3, init="pissa", target_modules=("q_proj", "up_proj"))
    model = lora.apply_lora(tiny_gpt(), cfg)
    for _, layer in lora.lora_layers(model):
        layer.lora_B.data = layer.lora_B.data * 1.5  # "trained"
    lora.save_adapter(model, tmp_path / "p")
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "p")
    np.testing.assert_allclose(logits(fresh), logits(model), rtol=0, atol=1e-6)


def test_save_and_load_a_named_inactive_adapter(tmp_path):
    model = trained()
    lora.add_adapter(model, "style", LoRAConfig(r=4, target_modules=("k_proj",)))
    fill(model, "style", seed=3)
    info = lora.save_adapter(model, tmp_path / "style", adapter_name="style")
    assert info["adapter_name"] == "style" and info["parameters"] == 2 * 4 * 32
    assert set(load_file(str(tmp_path / "style" / WEIGHTS_NAME))) == {
        f"{P}blocks.{i}.attn.k_proj.lora_{ab}.weight" for i in (0, 1) for ab in "AB"
    }
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "style")
    assert lora.adapter_names(fresh) == ["style"]
    lora.set_adapter(model, "style")
    assert np.array_equal(logits(fresh), logits(model))


def test_saving_onto_a_file_is_refused_and_leaves_the_file_alone(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    with pytest.raises(NotADirectoryError, match="exists and is not a folder"):
        lora.save_adapter(trained(), target)
    assert target.read_text() == "keep me" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_load_with_a_name_adds_a_second_adapter(saved):
    model, directory, _ = saved
    other = fill(lora.apply_lora(tiny_gpt(), LoRAConfig(r=4, target_modules=("q_proj", "k_proj"))), seed=7)
    first = {n: p.numpy().copy() for n, p in other.named_parameters()}
    own_output = logits(other)
    lora.load_adapter(other, directory, name="second")
    assert lora.adapter_names(other) == ["default", "second"] and lora.active_adapter(other) == "second"
    assert np.array_equal(logits(other), logits(model))
    for n, p in other.named_parameters():
        if n in first:
            assert np.array_equal(p.numpy(), first[n]), n  # the first adapter and the base untouched
        assert p.requires_grad == (".adapters.second." in n)
    lora.set_adapter(other, "default")
    assert np.array_equal(logits(other), own_output)


def test_a_name_clash_with_another_config_is_refused(saved):
    _, directory, _ = saved
    other = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4, target_modules=("q_proj", "v_proj")))
    before = snapshot(other)
    with pytest.raises(AdapterFileError, match="different config"):
        lora.load_adapter(other, directory)
    assert_unchanged(other, before)
    lora.load_adapter(other, directory, name="loaded")  # the way out the message names
    assert lora.adapter_names(other) == ["default", "loaded"]


@pytest.mark.parametrize(
    "cfg, extra_keys",
    [
        (
            dict(modules_to_save=("ln_f", "lm_head")),
            {f"{P}ln_f.weight", f"{P}ln_f.bias", f"{P}lm_head.weight"},
        ),
        (
            dict(bias="lora_only"),
            {f"{P}blocks.{i}.attn.{p}.base_layer.bias" for i in (0, 1) for p in ("q_proj", "v_proj")},
        ),
    ],
)
def test_trained_non_lora_weights_are_saved_and_restored(tmp_path, cfg, extra_keys):
    model = lora.apply_lora(tiny_gpt(tie_weights=False), LoRAConfig(**CFG, **cfg))
    rng = np.random.default_rng(5)
    for p in model.parameters():
        if p.requires_grad:  # "train" everything that is trainable
            p.data = rng.standard_normal(p.shape).astype(p.dtype) * 0.2
    lora.save_adapter(model, tmp_path / "m")
    keys = set(load_file(str(tmp_path / "m" / WEIGHTS_NAME)))
    assert {k for k in keys if "lora_" not in k} == extra_keys
    fresh = tiny_gpt(tie_weights=False)
    lora.load_adapter(fresh, tmp_path / "m")
    assert np.array_equal(logits(fresh), logits(model))
    mine = dict(model.named_parameters())
    for n, p in fresh.named_parameters():
        assert np.array_equal(p.numpy(), mine[n].numpy()), n


def test_a_tied_head_in_modules_to_save_is_saved_and_restored(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(**CFG, modules_to_save=("lm_head",)))
    assert model.lm_head.base.weight is model.tok_emb.weight and not model.tok_emb.weight.requires_grad
    head = model.lm_head.adapters["default"].weight  # the adapter's own copy (as in PEFT): it trains
    assert head is not model.tok_emb.weight and head.requires_grad
    head.data = head.data + 0.1  # "trained"; the input embedding stays the base's
    fill(model)
    lora.save_adapter(model, tmp_path / "tied")
    keys = set(load_file(str(tmp_path / "tied" / WEIGHTS_NAME)))
    assert {k for k in keys if "lora_" not in k} == {f"{P}lm_head.weight"}
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "tied")
    assert fresh.lm_head.base.weight is fresh.tok_emb.weight
    assert np.array_equal(logits(fresh), logits(model))


# ============================================================== refusing a mismatched base


def test_an_adapter_from_another_base_is_refused_naming_the_fingerprint(saved):
    _, directory, _ = saved
    for other in (tiny_gpt(seed=1), lora.apply_lora(tiny_gpt(seed=1), LoRAConfig(**CFG))):
        before = snapshot(other)
        with pytest.raises(AdapterFileError, match="fingerprint") as e:
            lora.load_adapter(other, directory)
        assert "different weights" in str(e.value) and "tok_emb.weight" in str(e.value)
        assert_unchanged(other, before)


def test_an_adapter_for_other_shapes_names_the_module_and_both_shapes(saved):
    _, directory, _ = saved
    other = tiny_gpt(n_embd=24)
    before = snapshot(other)
    with pytest.raises(AdapterFileError) as e:
        lora.load_adapter(other, directory)
    msg = str(e.value)
    assert "blocks.0.attn.q_proj.weight" in msg and "(16, 16)" in msg and "(24, 24)" in msg
    assert_unchanged(other, before)
    shallower = tiny_gpt(n_layer=1)  # the same weights, one block fewer
    two = tiny_gpt().state_dict()
    shallower.load_state_dict({k: v for k, v in two.items() if not k.startswith("blocks.1.")})
    with pytest.raises(AdapterFileError, match="has no parameter 'blocks.1.attn.q_proj.weight'") as e:
        lora.load_adapter(shallower, directory)
    assert "different weights" not in str(e.value)


def test_a_fingerprint_survives_merging_and_pissa(tmp_path):
    model = fill(lora.apply_lora(tiny_gpt(), LoRAConfig(r=2)))
    lora.merge_lora(model)
    with tl.no_grad():
        merged = logits(model)
    lora.unmerge_lora(model)  # W is back only up to rounding: the fingerprint is the attach-time base
    lora.save_adapter(model, tmp_path / "m")
    loaded = lora.load_adapter(tiny_gpt(), tmp_path / "m")  # the base is still recognised
    np.testing.assert_allclose(logits(loaded), merged, rtol=1e-4, atol=1e-5)
    pissa = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, init="pissa"))
    lora.save_adapter(pissa, tmp_path / "p")
    again = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, init="pissa"))
    lora.load_adapter(again, tmp_path / "p", name="again")  # the residual base is still recognised


# ============================================================== bad files change nothing


def corrupt(path, how):
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    if how == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "truncate_header":
        path.write_bytes(raw[: 8 + header // 2])
    elif how == "flip_data":
        b = bytearray(raw)
        for i in range(len(b) - 40, len(b) - 30):
            b[i] ^= 0xFF
        path.write_bytes(bytes(b))
    elif how == "flip_header":
        b = bytearray(raw)
        b[8] ^= 0xFF  # the '{' that opens the header
        path.write_bytes(bytes(b))
    elif how == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, len(raw), dtype=np.uint8).tobytes())
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["plain", "adapted"])
@pytest.mark.parametrize(
    "how", ["truncate", "truncate_header", "flip_data", "flip_header", "random", "empty"]
)
@pytest.mark.parametrize("with_sha", [True, False])
def test_a_corrupt_weights_file_is_refused_and_changes_nothing(saved, kind, how, with_sha):
    if how == "flip_data" and not with_sha:
        pytest.skip("without the recorded sha256, flipped payload bytes are just other numbers")
    _, directory, _ = saved
    if not with_sha:  # as PEFT writes it: no tinylora metadata
        rewrite_weights(directory, load_file(str(directory / WEIGHTS_NAME)))
    corrupt(directory / WEIGHTS_NAME, how)
    model = targets(kind)
    before = snapshot(model)
    with pytest.raises(AdapterFileError) as e:
        lora.load_adapter(model, directory)
    msg = str(e.value)
    assert WEIGHTS_NAME in msg
    if how == "flip_data":  # a readable file with other numbers: the sha256 of the tensors catches it
        assert "sha256" in msg and "corrupt" in msg
    else:
        assert "not a valid safetensors file" in msg
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "text, words",
    [
        ('{"r": 2, "lora_alpha": 4, "target_', "not valid JSON"),
        (b"\xff\xfe\x00garbage", "not valid JSON"),
        ("[1, 2, 3]", "JSON object"),
        ('{"lora_alpha": 4, "target_modules": ["q_proj"]}', "bad config"),
        ('{"r": 0, "lora_alpha": 4, "target_modules": ["q_proj"]}', "bad config"),
        ('{"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "init": "xavier"}', "bad config"),
    ],
)
@pytest.mark.parametrize("kind", ["plain", "adapted"])
def test_a_broken_config_is_refused_and_changes_nothing(saved, text, words, kind):
    _, directory, _ = saved
    path = directory / CONFIG_NAME
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    model = targets(kind)
    before = snapshot(model)
    with pytest.raises(AdapterFileError, match=words) as e:
        lora.load_adapter(model, directory)
    assert CONFIG_NAME in str(e.value)
    assert_unchanged(model, before)


@pytest.mark.parametrize("kind", ["plain", "adapted"])
def test_missing_files_and_directories_are_refused_and_change_nothing(saved, tmp_path, kind):
    _, directory, _ = saved
    model = targets(kind)
    before = snapshot(model)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        lora.load_adapter(model, tmp_path / "nowhere")
    (directory / WEIGHTS_NAME).rename(tmp_path / "w")
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        lora.load_adapter(model, directory)
    (tmp_path / "w").rename(directory / WEIGHTS_NAME)
    (directory / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=CONFIG_NAME):
        lora.load_adapter(model, directory)
    assert_unchanged(model, before)


@pytest.mark.parametrize(
    "edit, words",
    [
        ("extra", "no such module"),
        ("missing", "missing from the file"),
        ("shape", "file has (3, 16)"),
    ],
)
@pytest.mark.parametrize("kind", ["plain", "adapted"])
def test_weights_that_do_not_fit_are_refused_and_change_nothing(saved, edit, words, kind):
    _, directory, _ = saved
    tensors = load_file(str(directory / WEIGHTS_NAME))
    key = f"{P}blocks.1.attn.v_proj.lora_A.weight"
    if edit == "extra":
        tensors[f"{P}blocks.0.attn.zzz.lora_A.weight"] = tensors[key]
    elif edit == "missing":
        del tensors[key]
    else:
        tensors[key] = np.zeros((3, 16), np.float32)
    rewrite_weights(directory, tensors)
    model = targets(kind)
    before = snapshot(model)
    with pytest.raises(AdapterFileError, match="does not fit") as e:
        lora.load_adapter(model, directory)
    assert words in str(e.value)
    assert_unchanged(model, before)


def test_loading_into_a_merged_model_is_refused(saved):
    model, directory, _ = saved
    other = trained(seed=0)
    fill(other, seed=9)
    lora.merge_lora(other)
    before = snapshot(other)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.load_adapter(other, directory)
    assert_unchanged(other, before)
    lora.unmerge_lora(other)
    lora.load_adapter(other, directory)  # float32 merge + unmerge is exact only to round-off
    np.testing.assert_allclose(logits(other), logits(model), atol=1e-6)
    np.testing.assert_allclose(
        other.blocks[0].attn.q_proj.base.weight.numpy(),
        tiny_gpt().blocks[0].attn.q_proj.weight.numpy(),
        atol=1e-6,
    )


def test_a_bad_adapter_name_changes_nothing(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, init="pissa"))
    lora.save_adapter(model, tmp_path / "p")
    plain = tiny_gpt()
    before = snapshot(plain)
    with pytest.raises(ValueError, match="identifier"):
        lora.load_adapter(plain, tmp_path / "p", name="my-adapter")
    assert_unchanged(plain, before)


def test_a_failure_after_adapting_rolls_back(saved, monkeypatch):
    _, directory, _ = saved
    model = tiny_gpt()
    before = {n: p.numpy().copy() for n, p in model.named_parameters()}

    def broken(*args, **kwargs):
        raise OSError("disk went away")

    monkeypatch.setattr(lora.files, "set_adapter", broken)
    with pytest.raises(OSError, match="disk went away"):
        lora.load_adapter(model, directory)
    assert lora.lora_layers(model) == [] and lora.adapter_names(model) == []
    assert all(np.array_equal(p.numpy(), before[n]) for n, p in model.named_parameters())


# ============================================================== saving


def test_saving_while_merged_or_without_an_adapter_is_refused(tmp_path):
    model = trained()
    lora.merge_lora(model)
    with pytest.raises(RuntimeError, match="unmerge"):
        lora.save_adapter(model, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    with pytest.raises(ValueError, match="no active adapter"):
        lora.save_adapter(tiny_gpt(), tmp_path / "n")
    with pytest.raises(ValueError, match="nope"):
        lora.save_adapter(trained(), tmp_path / "n", adapter_name="nope")
    assert not (tmp_path / "n").exists()


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir() if p.name not in (CONFIG_NAME, WEIGHTS_NAME))


@pytest.mark.parametrize("where", ["weights", "config"])
def test_a_failed_save_leaves_the_old_adapter_loadable(saved, monkeypatch, where):
    model, directory, _ = saved
    old_output = logits(model)
    fill(model, seed=42)  # the model moves on; saving it over the old adapter fails part-way
    import safetensors.numpy

    real_save = safetensors.numpy.save_file

    def half_then_fail(tensors, filename, metadata=None):
        real_save(tensors, filename, metadata=metadata)
        with open(filename, "r+b") as f:
            f.truncate(100)
        raise OSError("no space left on device")

    def fail(*args, **kwargs):
        raise OSError("no space left on device")

    if where == "weights":
        monkeypatch.setattr(safetensors.numpy, "save_file", half_then_fail)
    else:
        monkeypatch.setattr(lora.files, "_fingerprint", fail)  # after the weights are written
    with pytest.raises(OSError, match="no space"):
        lora.save_adapter(model, directory)
    assert leftovers(directory) == []
    fresh = lora.load_adapter(tiny_gpt(), directory)
    assert np.array_equal(logits(fresh), old_output)
    monkeypatch.undo()
    lora.save_adapter(model, directory)  # and a save that works replaces it
    assert np.array_equal(logits(lora.load_adapter(tiny_gpt(), directory)), logits(model))
    assert leftovers(directory) == []


def test_a_failed_save_to_a_new_directory_leaves_no_files(tmp_path, monkeypatch):
    model = trained()
    monkeypatch.setattr(lora.files, "_fingerprint", lambda *a: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        lora.save_adapter(model, tmp_path / "new")
    assert not (tmp_path / "new").exists() or list((tmp_path / "new").iterdir()) == []


def test_train_save_load_continue(tmp_path):
    """The whole loop: train an adapter, save it, load it on a fresh base, get the same loss."""
    model = lora.apply_lora(
        tiny_gpt(), LoRAConfig(r=2, alpha=8, target_modules=("q_proj", "v_proj", "up_proj"))
    )
    opt = optim.AdamW(model.parameters(), lr=1e-2)
    ids = token_ids()
    targets_ = np.roll(ids, -1, axis=1)
    for _ in range(3):
        opt.zero_grad()
        model(ids, targets_)[1].backward()
        opt.step()
    lora.save_adapter(model, tmp_path / "t")
    fresh = lora.load_adapter(tiny_gpt(), tmp_path / "t")
    assert fresh(ids, targets_)[1].item() == model(ids, targets_)[1].item()
    assert fresh(ids, targets_)[1].item() != tiny_gpt()(ids, targets_)[1].item()


def test_a_malformed_fingerprint_is_a_clear_adapter_file_error(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4))
    lora.save_adapter(model, tmp_path)
    tensors = load_file(str(tmp_path / WEIGHTS_NAME))
    bad = {"tinylora_fingerprint": json.dumps({"modules": {"tok_emb.weight": 5}})}
    save_file(tensors, str(tmp_path / WEIGHTS_NAME), metadata=bad)
    fresh = tiny_gpt()
    with pytest.raises(lora.AdapterFileError, match="fingerprint .* is malformed"):
        lora.load_adapter(fresh, tmp_path)
    assert not lora.lora_layers(fresh)


def test_structural_fingerprint_differences_are_listed_first(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4))
    lora.save_adapter(model, tmp_path)
    other = tiny_gpt(seed=5, n_layer=1)  # different weights everywhere, and a layer fewer
    with pytest.raises(lora.AdapterFileError) as info:
        lora.load_adapter(other, tmp_path)
    lines = str(info.value).splitlines()[1:]
    assert "has no parameter" in lines[0]


def test_saving_the_same_adapter_twice_gives_identical_bytes(tmp_path):
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, alpha=4))
    first = lora.save_adapter(model, tmp_path / "a")
    second = lora.save_adapter(model, tmp_path / "b")
    assert first["weights_bytes"] == second["weights_bytes"]
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
