"""LoRA+: PEFT's parameter groups and learning rates, and one step that moves B ratio times faster."""

import numpy as np
import pytest

import tinylora as tl
from tinylora import lora, models, optim
from tinylora.lora import LoRAConfig

TINY = dict(vocab_size=17, block_size=8, n_layer=2, n_head=2, n_embd=16)


def tiny_gpt(seed=0):
    tl.manual_seed(seed)
    return models.GPT(models.GPTConfig(**TINY))


def names_by_lr(model, opt):
    names = {id(p): n for n, p in model.named_parameters()}
    out = {}
    for g in opt.param_groups:
        out.setdefault(g["lr"], []).extend(names[id(p)] for p in g["params"])
    return {lr: sorted(ns) for lr, ns in out.items()}


def test_groups_and_rates_follow_peft():
    model = lora.apply_lora(
        tiny_gpt(), LoRAConfig(r=2, target_modules=("q_proj", "tok_emb"), dora=False, bias="lora_only")
    )
    opt = lora.create_loraplus_optimizer(
        model, optim.AdamW, 1e-3, loraplus_lr_ratio=8, loraplus_lr_embedding=5e-4
    )
    assert isinstance(opt, optim.AdamW)
    groups = names_by_lr(model, opt)
    assert set(groups) == {1e-3, 5e-4, 8e-3}
    assert all(n.endswith("lora_A") for n in groups[1e-3])
    assert groups[5e-4] == [
        "tok_emb.adapters.default.lora_embedding_A",
        "tok_emb.adapters.default.lora_embedding_B",
    ]
    assert {n.rsplit(".", 1)[-1] for n in groups[8e-3]} == {"lora_B", "bias"}  # B and 1-D parameters
    assert all(g["weight_decay"] == 0.0 for g in opt.param_groups)  # PEFT's loraplus_weight_decay default


def test_the_magnitude_of_dora_goes_with_b_as_in_peft():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2, dora=True))
    opt = lora.create_loraplus_optimizer(
        model, optim.SGD, 0.01, loraplus_lr_ratio=4, loraplus_weight_decay=0.1
    )
    fast = [g for g in opt.param_groups if g["lr"] == pytest.approx(0.04)]
    names = {id(p): n for n, p in model.named_parameters()}
    in_fast = {names[id(p)].rsplit(".", 1)[-1] for g in fast for p in g["params"]}
    assert in_fast == {"lora_B", "lora_magnitude_vector"}
    assert {g["weight_decay"] for g in fast} == {0.1}


def test_one_sgd_step_moves_b_ratio_times_as_far_as_plain_sgd():
    def step(use_plus):
        model = lora.apply_lora(tiny_gpt().astype(np.float64), LoRAConfig(r=2, target_modules=("q_proj",)))
        for _, layer in lora.lora_layers(model):
            layer.lora_B.data = np.full(layer.lora_B.shape, 0.1)
        before = {n: p.data.copy() for n, p in model.named_parameters() if p.requires_grad}
        ids = np.random.default_rng(0).integers(0, 17, size=(2, 8))
        _, loss = model(ids, ids)
        loss.backward()
        opt = (
            lora.create_loraplus_optimizer(model, optim.SGD, 0.1, loraplus_lr_ratio=16)
            if use_plus
            else optim.SGD(model.parameters(), lr=0.1)
        )
        opt.step()
        return {n: p.data - before[n] for n, p in model.named_parameters() if p.requires_grad}

    plain, plus = step(False), step(True)
    for n in plain:
        ratio = 16 if n.endswith("lora_B") else 1
        np.testing.assert_allclose(plus[n], ratio * plain[n], rtol=1e-10, atol=1e-15)
        assert np.abs(plain[n]).max() > 0


def test_bad_arguments_are_refused():
    model = lora.apply_lora(tiny_gpt(), LoRAConfig(r=2))
    with pytest.raises(ValueError, match="loraplus_lr_ratio must be a number >= 0"):
        lora.create_loraplus_optimizer(model, optim.SGD, 0.1, loraplus_lr_ratio="16")
    with pytest.raises(ValueError, match="no trainable parameters"):
        lora.create_loraplus_optimizer(tiny_gpt().requires_grad_(False), optim.SGD, 0.1)
