"""Merging adapters into the base weight and taking them out again."""

import numpy as np
import pytest
from lora_helpers import (
    base_weights,
    fill_adapters,
    logits,
    merged_setup,
    tiny_gpt,
    token_ids,
)

import tinylora as tl
from tinylora import lora, nn
from tinylora.lora import LoRAConfig, LoRALinear

# ============================================================== merging


def test_merged_output_equals_unmerged_and_unmerge_restores_the_base():
    model, ids = merged_setup(), token_ids()
    model.eval()
    unmerged, w0 = logits(model, ids), base_weights(model)
    lora.merge_lora(model)
    for n, layer in lora.lora_layers(model):
        assert layer.merged == "default"
        expected = w0[n] + layer.scaling * layer.lora_B.numpy() @ layer.lora_A.numpy()
        np.testing.assert_allclose(layer.base.weight.numpy(), expected, rtol=0, atol=1e-15)
    merged = logits(model, ids)
    assert not np.array_equal(merged, logits(tiny_gpt(dtype=np.float64), ids))  # the adapter counts
    np.testing.assert_allclose(merged, unmerged, rtol=1e-12, atol=1e-12)
    lora.unmerge_lora(model)
    for n, layer in lora.lora_layers(model):
        assert layer.merged is None
        np.testing.assert_allclose(layer.base.weight.numpy(), w0[n], rtol=0, atol=1e-12)
    np.testing.assert_allclose(logits(model, ids), unmerged, rtol=1e-12, atol=1e-12)


def test_a_second_merge_is_a_no_op():
    model = merged_setup()
    lora.merge_lora(model)
    once = base_weights(model)
    lora.merge_lora(model)
    twice = base_weights(model)
    assert all(np.array_equal(once[n], twice[n]) for n in once)
    lora.unmerge_lora(model)
    lora.unmerge_lora(model)  # and so is a second unmerge
    fresh = tiny_gpt(dtype=np.float64)
    for n, w in base_weights(model).items():
        np.testing.assert_allclose(w, fresh.get_submodule(n).weight.numpy(), atol=1e-12)


def test_training_while_merged_is_refused_but_inference_works():
    model, ids = merged_setup(), token_ids()
    lora.merge_lora(model)
    model.train()
    with pytest.raises(RuntimeError, match="unmerge"):
        model(ids)
    with tl.no_grad():
        a = logits(model, ids)  # train mode, no graph: fine
    model.eval()
    b = logits(model, ids)
    assert np.array_equal(a, b)
    lora.unmerge_lora(model)
    model.train()
    model(ids, ids)[1].backward()  # and after unmerge training works again


def test_merge_and_unload_gives_plain_linears_with_equal_outputs():
    model, ids = merged_setup(), token_ids()
    model.eval()
    adapted = logits(model, ids)
    n_base = tiny_gpt().num_parameters()
    plain = lora.merge_and_unload(model)
    assert lora.lora_layers(plain) == []
    assert type(plain.blocks[0].attn.q_proj) is nn.Linear and type(plain.blocks[1].mlp.up_proj) is nn.Linear
    assert plain.num_parameters() == n_base
    np.testing.assert_allclose(logits(plain, ids), adapted, rtol=1e-12, atol=1e-12)


def test_merge_in_float32_stays_close():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=4))
    fill_adapters(model)
    model.eval()
    ids = token_ids()
    a = logits(model, ids)
    lora.merge_lora(model)
    np.testing.assert_allclose(logits(model, ids), a, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("alpha", [16, 3])  # scaling 2 (exact in binary) and 0.375
def test_merge_folds_exactly_as_a_large_batch_does(alpha):
    """With many rows lora_linear works with W + s B A summed as merge_lora sums it: bit-identical."""
    rng = np.random.default_rng(alpha)
    base = nn.Linear(16, 12)
    layer = LoRALinear(base, r=8, alpha=alpha)
    layer.lora_B.data = rng.standard_normal((12, 8)).astype(np.float32)
    layer.eval()
    x = tl.Tensor(rng.standard_normal((40, 16)).astype(np.float32))  # 40 * (16 + 12) > 16 * 12: folded
    few = tl.Tensor(x.numpy()[:2])  # 2 rows: two thin products
    unmerged, unmerged_few = layer(x).numpy(), layer(few).numpy()
    layer.merge()
    np.testing.assert_array_equal(layer(x).numpy(), unmerged)
    np.testing.assert_allclose(layer(few).numpy(), unmerged_few, rtol=1e-5, atol=1e-5)
