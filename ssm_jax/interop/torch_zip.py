"""Read a ``torch.save`` state dict (``pytorch_model.bin``) without importing torch.

Since PyTorch 1.6, ``torch.save`` writes a zip archive::

    <prefix>/data.pkl      a pickle of the object; each tensor storage is a *persistent id*
                           ('storage', <torch.FloatStorage etc.>, key, location, numel)
    <prefix>/data/<key>    the raw bytes of storage ``key`` (numel elements, native order)
    <prefix>/byteorder     "little" or "big" (written since PyTorch 1.10; little when absent)

and a tensor pickles as ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``.
The unpickler below resolves only those globals (plus ``collections.OrderedDict`` and
``torch._utils._rebuild_parameter``) to NumPy stand-ins and refuses every other global, so a
checkpoint cannot run code on load — the same guarantee as ``torch.load(weights_only=True)``.
The pre-1.6 (non-zip) format is refused with a message saying how to convert it.
"""

from __future__ import annotations

import collections
import os
import pickle
import zipfile
from typing import Any

import ml_dtypes
import numpy as np

__all__ = ["read_torch_state_dict"]

# The storage classes torch.save names in its persistent ids (torch/storage.py), by element type.
_STORAGE_DTYPES = {
    "DoubleStorage": np.dtype(np.float64),
    "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}


class _StorageType:
    """Stand-in for a ``torch.<X>Storage`` class: only its element dtype matters."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(storage: np.ndarray, storage_offset: int, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` as a strided view of the storage, copied."""
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride):
        raise pickle.UnpicklingError(f"tensor with size {size} but stride {stride}")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    if any(s < 0 for s in stride) or storage_offset < 0:
        raise pickle.UnpicklingError(f"tensor with negative stride {stride} or offset {storage_offset}")
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.size:
        raise pickle.UnpicklingError(
            f"tensor of size {size}, stride {stride}, offset {storage_offset} reaches element {last} "
            f"of a storage of {storage.size} elements"
        )
    item = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[storage_offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view)  # own the memory: the storage may be shared by several tensors


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    _GLOBALS = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    }

    def __init__(self, file, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(file)
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._path = path
        self._storages: dict[str, np.ndarray] = {}

    def find_class(self, module: str, name: str):
        if (module, name) in self._GLOBALS:
            return self._GLOBALS[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(
            f"read_torch_state_dict: {self._path} references {module}.{name}; only state dicts of "
            "plain tensors can be read without torch (load it with torch and re-save "
            "`model.state_dict()`, or convert it to safetensors)"
        )

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"read_torch_state_dict: unexpected persistent id {pid!r} in {self._path}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"read_torch_state_dict: unexpected storage type {storage_type!r} in {self._path}")
        key = str(key)
        if key not in self._storages:
            dtype = storage_type.dtype
            if self._byteorder == "big" and dtype.itemsize > 1:
                dtype = dtype.newbyteorder(">")
            raw = self._archive.read(f"{self._prefix}data/{key}")
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"read_torch_state_dict: storage {key} of {self._path} has {len(raw)} bytes; "
                    f"expected {numel} x {dtype.itemsize}"
                )
            self._storages[key] = np.frombuffer(raw, dtype).astype(storage_type.dtype, copy=False)
        return self._storages[key]


def read_torch_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The tensors of a ``torch.save``-d state dict, as NumPy arrays in their stored dtype.

    ``bfloat16`` tensors come back as ``ml_dtypes.bfloat16`` arrays. Tensors that shared a
    storage in PyTorch (tied weights) come back as separate, equal arrays.
    """
    path = os.fspath(path)
    if not zipfile.is_zipfile(path):
        raise ValueError(
            f"read_torch_state_dict: {path} is not a zip archive; files written by torch < 1.6 (or "
            "with _use_new_zipfile_serialization=False) need torch to read: "
            "torch.save(torch.load(path), path) rewrites one in the zip format"
        )
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n == "data.pkl" or n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"read_torch_state_dict: {path} holds {len(pickles)} data.pkl records; expected 1 (a torch.save archive)")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode().strip() if prefix + "byteorder" in names else "little"
        if byteorder not in ("little", "big"):
            raise ValueError(f"read_torch_state_dict: {path} has byteorder {byteorder!r}; expected 'little' or 'big'")
        with archive.open(pickles[0]) as f:
            obj: Any = _StateDictUnpickler(f, archive, prefix, byteorder, path).load()
    if not isinstance(obj, dict):
        raise ValueError(f"read_torch_state_dict: {path} holds a {type(obj).__name__}; expected a state dict (name -> tensor)")
    bad = [k for k, v in obj.items() if not (isinstance(k, str) and isinstance(v, np.ndarray))]
    if bad:
        raise ValueError(f"read_torch_state_dict: {path} has entries that are not tensors: {bad[:5]}")
    return dict(obj)
