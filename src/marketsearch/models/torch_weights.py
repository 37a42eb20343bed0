"""Read a legacy-format PyTorch state dict (``torch.save`` before 1.6) with NumPy alone.

A ``.pth`` file of that format is five things back to back: three small pickles (a magic
number, the protocol version, system info), the state dict pickled with persistent ids in place
of the tensors' storages, a pickle of the storage keys, and then each storage's raw bytes
(an 8-byte little-endian element count, then the elements), in the order of those keys.

A pickle is code: unpickling can call any importable function. ``RestrictedUnpickler`` resolves
only the globals a state dict needs (``collections.OrderedDict``, the tensor-rebuild function
and the typed storage classes, each replaced by a harmless stand-in) and refuses every other
with an ``UnsafePickleError`` that names it, before anything runs.
"""
from __future__ import annotations

import collections
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> the NumPy dtype of its elements.
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle names a global that a plain state dict never needs."""


class WeightsFormatError(ValueError):
    """The file is not a legacy-format PyTorch state dict, or is cut short."""


@dataclass(frozen=True)
class _StorageType:
    name: str

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(STORAGE_DTYPES[self.name])


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    size: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


def _rebuild_tensor(storage, storage_offset, size, stride, *_ignored):
    """Stand-in for ``torch._utils._rebuild_tensor_v2``: remembers where the tensor lies."""
    return _TensorRef(storage, int(storage_offset), tuple(int(s) for s in size),
                      tuple(int(s) for s in stride))


class RestrictedUnpickler(pickle.Unpickler):
    """Resolves only what a legacy state dict holds; every other global is refused by name."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"refusing to load global {module}.{name} from a weights file: a state dict needs "
            "only collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.*Storage")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType)):
            raise UnsafePickleError(f"unexpected persistent id in a weights file: {pid!r:.200}")
        _, storage_type, key, _location, size = pid[:5]
        return _StorageRef(str(key), storage_type.dtype, int(size))


def _load_one(f) -> object:
    try:
        return RestrictedUnpickler(f).load()
    except UnsafePickleError:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError) as exc:
        raise WeightsFormatError(f"not a legacy PyTorch weights file: {exc}") from exc


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """{parameter name: float32/int64 array} from a legacy-format ``.pth`` file."""
    path = Path(path)
    with path.open("rb") as f:
        head = f.read(2)
        if head == b"PK":
            raise WeightsFormatError(f"{path}: a zip-format (torch >= 1.6) checkpoint; only the "
                                     "legacy format is read")
        f.seek(0)
        if _load_one(f) != MAGIC_NUMBER:
            raise WeightsFormatError(f"{path}: wrong magic number, not a legacy torch file")
        if _load_one(f) != PROTOCOL_VERSION:
            raise WeightsFormatError(f"{path}: unsupported torch protocol version")
        sys_info = _load_one(f)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
            raise WeightsFormatError(f"{path}: only little-endian files are read")
        state = _load_one(f)
        keys = _load_one(f)
        if not isinstance(state, dict) or not isinstance(keys, list):
            raise WeightsFormatError(f"{path}: holds no state dict")
        refs = {ref.storage.key: ref.storage for ref in state.values()
                if isinstance(ref, _TensorRef)}
        buffers: dict[str, np.ndarray] = {}
        for key in keys:
            count_bytes = f.read(8)
            if len(count_bytes) != 8:
                raise WeightsFormatError(f"{path}: cut short before storage {key}")
            (count,) = struct.unpack("<q", count_bytes)
            storage = refs.get(str(key))
            dtype = storage.dtype if storage else np.dtype(np.float32)
            raw = f.read(count * dtype.itemsize)
            if len(raw) != count * dtype.itemsize:
                raise WeightsFormatError(f"{path}: storage {key} is cut short")
            buffers[str(key)] = np.frombuffer(raw, dtype=dtype)
    out: dict[str, np.ndarray] = {}
    for name, ref in state.items():
        if not isinstance(ref, _TensorRef):
            raise WeightsFormatError(f"{path}: entry {name!r} is not a tensor")
        data = buffers.get(ref.storage.key)
        if data is None:
            raise WeightsFormatError(f"{path}: tensor {name!r} has no storage data")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[ref.offset:], shape=ref.shape, strides=tuple(s * item for s in ref.stride))
        out[str(name)] = np.array(view)  # a copy, contiguous and writable
    return out
