"""Weight files: safetensors round trips, atomic writes, clear errors for bad files."""

import json
import os

import numpy as np
import pytest

import tinylora as tl
from tinylora import io, models, nn
from tinylora.io import WeightFileError, load_weights, read_metadata, save_weights


def some_weights(seed=0):
    r = np.random.default_rng(seed)
    return {
        "layer.weight": r.standard_normal((3, 4)).astype(np.float32),
        "layer.bias": r.standard_normal(3).astype(np.float32),
        "table": r.standard_normal((2, 2, 2)),  # float64
        "half": r.standard_normal(5).astype(np.float16),
        "ids": np.arange(7, dtype=np.int64),
    }


def files_in(directory):
    return sorted(os.listdir(directory))


def test_save_and_load_weights_round_trip(tmp_path, backend):
    w = some_weights()
    given = dict(w)
    given["layer.weight"] = tl.Tensor(w["layer.weight"])  # Tensors are accepted too
    given["table"] = tl.xp().asarray(w["table"])  # arrays of the active backend
    path = save_weights(given, tmp_path / "sub" / "w.safetensors", metadata={"step": 3, "name": "demo"})
    assert path == tmp_path / "sub" / "w.safetensors" and path.is_file()  # parents are created
    back = load_weights(path)
    assert sorted(back) == sorted(w)
    for k, v in w.items():
        assert isinstance(back[k], np.ndarray)
        assert back[k].dtype == v.dtype and back[k].shape == v.shape, k
        np.testing.assert_array_equal(back[k], v)
    assert read_metadata(path) == {"step": 3, "name": "demo"}
    assert files_in(tmp_path / "sub") == ["w.safetensors"]  # no temporary file left behind


def test_non_contiguous_arrays_are_saved_by_value(tmp_path):
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    save_weights({"t": a.T, "s": a[:, ::2]}, tmp_path / "w.safetensors")
    back = load_weights(tmp_path / "w.safetensors")
    np.testing.assert_array_equal(back["t"], a.T)
    np.testing.assert_array_equal(back["s"], a[:, ::2])


def test_read_metadata_without_metadata(tmp_path):
    save_weights({"a": np.zeros(2, np.float32)}, tmp_path / "w.safetensors")
    assert read_metadata(tmp_path / "w.safetensors") == {}


def test_save_overwrites_an_existing_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights({"a": np.zeros(2, np.float32)}, path)
    save_weights({"b": np.ones(3, np.float32)}, path)
    back = load_weights(path)
    assert list(back) == ["b"]
    np.testing.assert_array_equal(back["b"], np.ones(3))
    assert files_in(tmp_path) == ["w.safetensors"]


def test_write_is_atomic_when_saving_fails_midway(tmp_path, monkeypatch):
    from safetensors import numpy as st_numpy

    path = tmp_path / "w.safetensors"
    save_weights({"a": np.arange(4, dtype=np.float32)}, path)
    original = path.read_bytes()
    written = []

    def failing_save_file(arrays, filename, metadata=None):
        with open(filename, "wb") as f:  # half a file appears at the temporary path...
            f.write(original[: len(original) // 2])
        written.append(filename)
        raise OSError("disk full")  # ...and then the write fails

    monkeypatch.setattr(st_numpy, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_weights({"a": np.zeros(1000, np.float32)}, path)
    assert len(written) == 1 and written[0] != str(path)  # it wrote beside the target, not over it
    assert os.path.dirname(written[0]) == str(tmp_path)
    assert path.read_bytes() == original  # the old file is intact
    assert files_in(tmp_path) == ["w.safetensors"]  # and no temporary file is left
    np.testing.assert_array_equal(load_weights(path)["a"], np.arange(4))

    # a failure when there was no file before leaves nothing at all
    with pytest.raises(OSError, match="disk full"):
        save_weights({"a": np.zeros(3, np.float32)}, tmp_path / "new.safetensors")
    assert files_in(tmp_path) == ["w.safetensors"]


def test_write_text_atomic(tmp_path):
    path = tmp_path / "a" / "config.json"
    io.write_text_atomic(path, json.dumps({"r": 8}))
    assert json.loads(path.read_text()) == {"r": 8}
    with pytest.raises(RuntimeError), io.atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert json.loads(path.read_text()) == {"r": 8}
    assert files_in(path.parent) == ["config.json"]


@pytest.mark.parametrize("keep", [0, 3, 8, 20, -1, -9])
def test_truncated_file_raises_weight_file_error_naming_it(tmp_path, keep):
    path = tmp_path / "w.safetensors"
    save_weights(some_weights(), path)
    data = path.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[:keep] if keep >= 0 else data[: len(data) + keep])
    with pytest.raises(WeightFileError, match="cut.safetensors") as info:
        load_weights(cut)
    assert isinstance(info.value, ValueError)
    assert "not a valid safetensors file" in str(info.value)


def test_foreign_files_raise_weight_file_error_naming_them(tmp_path):
    junk = tmp_path / "random.bin"
    junk.write_bytes(np.random.default_rng(0).bytes(300))
    text = tmp_path / "config.json"
    text.write_text(json.dumps({"weights": [1, 2, 3], "name": "not a weight file"}))
    bad_header = tmp_path / "bad_header.safetensors"
    body = b"this is not json"
    bad_header.write_bytes(len(body).to_bytes(8, "little") + body)
    for path in (junk, text, bad_header):
        with pytest.raises(WeightFileError, match=path.name):
            load_weights(path)
    for path in (junk, text):
        with pytest.raises(WeightFileError, match=path.name):
            read_metadata(path)


def test_missing_file_raises_file_not_found_naming_it(tmp_path):
    path = tmp_path / "nowhere" / "missing.safetensors"
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_weights(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        read_metadata(path)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        nn.Linear(2, 2).load(path)
    assert not (tmp_path / "nowhere").exists()  # reading never creates folders


def test_saving_onto_a_folder_or_non_numbers_is_refused_clearly(tmp_path):
    with pytest.raises(IsADirectoryError, match="is a folder; give a file path"):
        io.save_weights({"a": np.zeros(2, np.float32)}, tmp_path)
    with pytest.raises(TypeError, match="'a' must be a numeric or boolean array, got dtype <U5"):
        io.save_weights({"a": np.array(["hello"])}, tmp_path / "w.safetensors")
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_module_save_and_load(tmp_path, backend):
    tl.manual_seed(1)
    src = models.MLP([4, 6, 3])
    tl.manual_seed(2)
    dst = models.MLP([4, 6, 3])
    path = src.save(tmp_path / "mlp.safetensors", metadata={"sizes": [4, 6, 3]})
    assert read_metadata(path) == {"sizes": [4, 6, 3]}
    assert sorted(load_weights(path)) == sorted(src.state_dict())
    result = dst.load(path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    for k, v in src.state_dict().items():
        np.testing.assert_array_equal(tl.to_numpy(dst.state_dict()[k]), tl.to_numpy(v))
    x = tl.Tensor(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(tl.to_numpy(dst(x).data), tl.to_numpy(src(x).data))


def test_module_save_and_load_tied_gpt(tmp_path):
    cfg = models.GPTConfig(vocab_size=7, block_size=4, n_layer=1, n_head=1, n_embd=4)
    tl.manual_seed(1)
    src = models.GPT(cfg)
    src.save(tmp_path / "gpt.safetensors")
    assert "lm_head.weight" not in load_weights(tmp_path / "gpt.safetensors")  # stored once
    tl.manual_seed(2)
    dst = models.GPT(cfg)
    dst.load(tmp_path / "gpt.safetensors")
    assert dst.lm_head.weight is dst.tok_emb.weight
    ids = np.array([[1, 2, 3]])
    np.testing.assert_array_equal(src(ids).data, dst(ids).data)


def test_module_load_of_a_bad_or_mismatched_file_changes_nothing(tmp_path):
    tl.manual_seed(3)
    model = models.MLP([4, 6, 3])
    before = {k: v.copy() for k, v in model.state_dict().items()}
    models.MLP([4, 5, 3]).save(tmp_path / "other.safetensors")
    with pytest.raises(nn.StateDictError, match=r"'fc1.weight': expected shape \(6, 4\), given \(5, 4\)"):
        model.load(tmp_path / "other.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(WeightFileError, match="junk.safetensors"):
        model.load(tmp_path / "junk.safetensors")
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(v, before[k])
    # non-strict loading of a file with fewer keys
    save_weights({"fc2.bias": np.full(3, 7.0, np.float32)}, tmp_path / "part.safetensors")
    result = model.load(tmp_path / "part.safetensors", strict=False)
    assert result.missing_keys == ["fc1.weight", "fc1.bias", "fc2.weight"]
    np.testing.assert_array_equal(model.fc2.bias.data, np.full(3, 7.0))


def test_saved_files_get_ordinary_permissions(tmp_path):
    """The temporary file is private (mkstemp makes it 0600); the saved file must not be."""
    umask = os.umask(0o022)
    try:
        path = save_weights({"a": np.zeros(2, np.float32)}, tmp_path / "w.safetensors")
        assert path.stat().st_mode & 0o777 == 0o644
        os.chmod(path, 0o640)  # overwriting keeps the mode the file had
        save_weights({"a": np.ones(2, np.float32)}, path)
        assert path.stat().st_mode & 0o777 == 0o640
        io.write_text_atomic(tmp_path / "c.json", "{}")
        assert (tmp_path / "c.json").stat().st_mode & 0o777 == 0o644
    finally:
        os.umask(umask)
