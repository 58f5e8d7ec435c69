"""Read checkpoints for :mod:`pytest_padaudit.checkpoint`: row readers and shapes per key.

PyTorch ``state_dict`` files are read with ``torch.load(weights_only=True)`` (never a full
unpickle); ``.safetensors`` and Keras ``.weights.h5`` / ``.keras`` files read only the row
asked for where the format allows it; Flax ``.msgpack`` files (``flax.serialization``) are
read whole. Frameworks and h5py are imported only when needed.
"""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from ..adapters.flax import checkpoint as flax_files
from ..adapters.flax.checkpoint import msgpack_state
from ..adapters.keras import checkpoint as keras_files
from ..adapters.keras.checkpoint import h5_arrays
from ..adapters.torch import checkpoint as torch_files
from ..adapters.torch.checkpoint import torch_installed, torch_load
from .errors import PadAuditError
from .handle import CheckpointWords

#: words for a mapping of NumPy arrays: no framework's idiom to speak.
_NUMPY = replace(
    torch_files.WORDS,
    zero_fix="zero the row before release (state[{key!r}][{pad}] = 0)",
    nonzero_why="the row trained or was initialised non-zero",
    changed_why="training moved the pad row: it received gradient or the optimizer moved it",
)


def checkpoint_words(framework: str) -> CheckpointWords:
    """Return what the findings say about ``framework``'s saved pad rows (its adapter's)."""
    by_framework = {"torch": torch_files, "keras": keras_files, "flax": flax_files}
    found = by_framework.get(framework)
    return found.WORDS if found is not None else _NUMPY


Row = Callable[[int], np.ndarray]


def load(source: str | os.PathLike[str] | Mapping[str, Any]) -> tuple[str, dict, dict]:
    """Return (name, key -> row reader, key -> shape) for a checkpoint or a mapping."""
    if isinstance(source, Mapping):
        flat = flatten(source)
        return "(state dict)", *_readers(flat)
    if not isinstance(source, (str, os.PathLike)):
        raise PadAuditError(
            f"cannot read a checkpoint from a {type(source).__name__}: pass a file path or "
            "a mapping of names to arrays (a state_dict)"
        )
    path = Path(source)
    if not path.is_file():
        raise PadAuditError(f"checkpoint {str(path)!r} does not exist: pass the path of a file")
    name = path.name.lower()
    if name.endswith(".safetensors"):
        return str(path), *_safetensors(path)
    if name.endswith(".keras"):
        with zipfile.ZipFile(path) as archive:
            if "model.weights.h5" not in archive.namelist():
                raise PadAuditError(f"{path} holds no model.weights.h5: pass a Keras 3 .keras file")
            data = io.BytesIO(archive.read("model.weights.h5"))
        return str(path), *_h5(data)
    if name.endswith((".h5", ".hdf5")):
        return str(path), *_h5(path)
    if name.endswith(".msgpack"):
        return str(path), *_readers(flatten(msgpack_state(path)))
    return str(path), *_readers(flatten(torch_load(path)))


def _safetensors(path: Path) -> tuple[dict, dict]:
    try:
        from safetensors import safe_open
    except ImportError:
        raise PadAuditError(f"reading {path} needs safetensors: pip install safetensors") from None
    framework = "pt" if torch_installed() else "numpy"  # bf16 tensors need torch
    rows, shapes = {}, {}
    with safe_open(str(path), framework=framework) as f:
        for key in f.keys():  # noqa: SIM118  (safe_open is not iterable)
            shapes[key] = tuple(f.get_slice(key).get_shape())

    def reader(key: str) -> Row:
        def row(pad: int) -> np.ndarray:
            with safe_open(str(path), framework=framework) as f:
                return _numpy(f.get_slice(key)[pad])

        return row

    for key in shapes:
        rows[key] = reader(key)
    return rows, shapes


def _h5(source: Path | io.BytesIO) -> tuple[dict, dict]:
    return _readers(h5_arrays(source))


def flatten(state: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Flatten nested mappings ({"model": {...}}) into dotted keys."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, name + "."))
        elif hasattr(value, "shape"):
            flat[name] = value
    return flat


def _readers(arrays: Mapping[str, Any]) -> tuple[dict, dict]:
    rows = {k: (lambda pad, v=v: _numpy(v[pad])) for k, v in arrays.items()}
    return rows, {k: tuple(int(s) for s in v.shape) for k, v in arrays.items()}


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: bf16 and friends have no NumPy twin
        value = value.detach().to("cpu")
        if value.is_floating_point():
            value = value.float()
        return value.numpy()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)
