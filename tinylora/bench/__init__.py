"""Timed training steps for `tinylora bench` and benchmarks/.

timing   time_steps, rounds and the ratios measured within them, machine_info
steps    what tinylora is timed on (MLP, op chain, GPT: full, LoRA, bias-only) and the
         hand-written MLP step (no autograd) it is measured against
peers    the same steps in PyTorch eager (CPU, or CUDA when the backend is cupy), dezero, mygrad
run      the command: a spec -> a step, each timed in a process of its own, in rounds
"""

from .peers import (
    PEERS,
    dezero_modules,
    gpt_torch_step,
    mlp_dezero_step,
    mlp_mygrad_step,
    mlp_torch_step,
    op_chain_dezero,
    op_chain_mygrad,
    op_chain_torch,
    torch_device,
    torch_module,
    torch_sync,
)
from .run import (
    MLP_STEPS,
    OP_CHAINS,
    bench_specs,
    check_widths,
    make_step,
    measure,
    measure_isolated,
    run_bench,
    step_memory,
)
from .steps import (
    FAMILY_MODES,
    GPT_BATCH,
    GPT_MODES,
    GPT_SHAPE,
    LR,
    MLP_BATCH,
    MLP_SIZES,
    clear_grads,
    gpt_family_step,
    gpt_problem,
    gpt_tinylora_step,
    mlp_handwritten_step,
    mlp_problem,
    mlp_tinylora_step,
    op_chain,
    op_chain_tinylora,
)
from .timing import machine_info, median_ratios, median_rows, ratios, row_key, time_steps

__all__ = [
    "GPT_BATCH",
    "GPT_MODES",
    "FAMILY_MODES",
    "gpt_family_step",
    "GPT_SHAPE",
    "LR",
    "MLP_BATCH",
    "MLP_SIZES",
    "MLP_STEPS",
    "OP_CHAINS",
    "PEERS",
    "bench_specs",
    "check_widths",
    "clear_grads",
    "dezero_modules",
    "gpt_problem",
    "gpt_tinylora_step",
    "gpt_torch_step",
    "machine_info",
    "make_step",
    "measure",
    "measure_isolated",
    "median_ratios",
    "median_rows",
    "mlp_dezero_step",
    "mlp_handwritten_step",
    "mlp_mygrad_step",
    "mlp_problem",
    "mlp_tinylora_step",
    "mlp_torch_step",
    "op_chain",
    "op_chain_dezero",
    "op_chain_mygrad",
    "op_chain_tinylora",
    "op_chain_torch",
    "ratios",
    "row_key",
    "run_bench",
    "step_memory",
    "time_steps",
    "torch_device",
    "torch_module",
    "torch_sync",
]
