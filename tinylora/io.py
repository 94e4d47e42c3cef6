"""Weight files: state dicts as safetensors, written atomically (temporary file, then rename)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import backend
from .tensor import Tensor


class WeightFileError(ValueError):
    """A weight file is missing, truncated, or not a safetensors file."""


def _safetensors_numpy():
    try:
        from safetensors import numpy as st_numpy
    except ImportError:
        raise ImportError(
            'reading and writing weight files needs the "safetensors" package: '
            'pip install "tinylora[course]" (or "tinylora[models]")'
        ) from None
    return st_numpy


class WriteError(OSError):
    """Writing a file failed (no space, no permission, read-only, no folder): names the path and what to do."""

    def __str__(self) -> str:
        return f"could not write {self.filename}: {self.strerror}; {_what_to_do(self.errno)}"


def _what_to_do(err) -> str:
    if err == errno.ENOSPC:
        return "free some disk space or write somewhere else"
    if err in (errno.EACCES, errno.EPERM):
        return "check the folder's permissions or write somewhere else"
    if err == errno.EROFS:
        return "that file system is read-only: write somewhere else"
    if err in (errno.ENOENT, errno.ENOTDIR, errno.EEXIST):
        return "a folder on the way is missing or is a file: check the path"
    return "check the path and the disk"


def _write_error(e: OSError, path) -> WriteError:
    """`e` as a WriteError naming `path` (the file the user asked for, not a temporary)."""
    cause = e
    while isinstance(cause.__cause__, OSError):  # the first OS error says what really happened
        cause = cause.__cause__
    reason = cause.strerror or str(cause)
    return WriteError(e.errno, reason.removeprefix(f"could not write {cause.filename}: "), str(path))


@contextlib.contextmanager
def atomic_path(path, suffix: str = ""):
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds.

    Any OS error (here or in the block) becomes a WriteError naming `path`; no temporary stays.
    """
    path, tmp = Path(path), None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
        os.close(fd)
        yield Path(tmp)
        os.chmod(
            tmp, path.stat().st_mode & 0o777 if path.exists() else _default_mode()
        )  # mkstemp made it 0600
        os.replace(tmp, path)
    except WriteError as e:
        if e.filename == str(path):
            raise
        raise _write_error(e, path) from e
    except OSError as e:
        raise _write_error(e, path) from e
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def check_writable(folder) -> Path:
    """Raise a WriteError now if files cannot be written in `folder` (creating nothing that stays)."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{existing} is a file, not a folder", str(existing))
        fd, probe = tempfile.mkstemp(prefix=".tinylora-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise _write_error(e, folder) from e
    return folder


def _default_mode() -> int:
    """The permissions a plain open() would give a new file (0o666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path, text: str) -> None:
    """Write a text file so that readers see the old or the new content, never half of it."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_weights(tensors: dict, path, metadata: dict | None = None) -> Path:
    """Save {name: array or Tensor} as a safetensors file (host float arrays), atomically."""
    st_numpy = _safetensors_numpy()
    arrays = {}
    for name, value in tensors.items():
        arrays[name] = np.ascontiguousarray(
            backend.to_numpy(value.data if isinstance(value, Tensor) else value)
        )
        if arrays[name].dtype.kind not in "biuf":
            raise TypeError(
                f"save_weights: {name!r} must be a numeric or boolean array, got dtype {arrays[name].dtype}"
            )
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(
            f"save_weights: {str(path)!r} is a folder; give a file path such as model.safetensors"
        )
    with atomic_path(path, suffix=".safetensors") as tmp:
        st_numpy.save_file(arrays, str(tmp), metadata=meta or None)
    return path


def load_weights(path) -> dict:
    """Read a safetensors file into {name: numpy array}; clear errors for bad files."""
    st_numpy = _safetensors_numpy()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weight file {str(path)!r} does not exist")
    try:
        return st_numpy.load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ValueError: all mean a bad file
        raise WeightFileError(
            f"weight file {str(path)!r} is not a valid safetensors file (truncated or foreign?): {e}"
        ) from None


def read_metadata(path) -> dict:
    """The string metadata stored in a safetensors header (JSON values decoded when possible)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if n <= 0 or n > os.path.getsize(path) - 8:
                raise ValueError(f"header length {n} does not fit in the file")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise FileNotFoundError(f"weight file {str(path)!r} does not exist") from None
    except Exception as e:
        raise WeightFileError(f"weight file {str(path)!r} has no readable safetensors header: {e}") from None
    out = {}
    for k, v in (header.get("__metadata__") or {}).items():
        try:
            out[k] = json.loads(v)
        except (TypeError, ValueError):
            out[k] = v
    return out
