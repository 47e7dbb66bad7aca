"""A stand-in for the CuPy calls fastzsl's cupy backend makes, over NumPy and the CPU harness.

Installed as ``sys.modules["cupy"]`` by the test plugin (tests/cuda_host/plugin.py) only
when CuPy itself is missing; never used by the library. It provides exactly what
``fastzsl/backends/cupy`` and its tests touch: ``ndarray`` (``get``, ``astype``, slicing,
assignment, ``device``), ``asarray``/``ascontiguousarray``/``empty``/``zeros``/``asnumpy``,
``from_dlpack`` (of the tests' fake torch CUDA tensors only; a real DLPack capsule is
refused), ``cuda.Device`` (one device with an H100 SXM profile), ``cuda.runtime``,
``cuda.Stream``/``get_current_stream``, ``RawModule``/``get_function``/launch, and
``cuda.cublas.gemmEx`` (float32, over ``ndarray.data.ptr``: an opaque device address that
only this gemmEx resolves; the compute type decides the emulated arithmetic).

It is stricter than CuPy where that finds bugs: every kernel argument is checked against
the compiled kernel's parameter types (arrays must be C-contiguous, of the pointee dtype),
a launch over 48 KB of dynamic shared memory needs ``max_dynamic_shared_size_bytes``, and
NumPy cannot read an ``ndarray`` implicitly (as with CuPy, ``np.asarray`` and NumPy ufuncs
raise), nor can a hidden door reach its host memory (``.ctypes``, ``.base``; ``.data`` gives only
an opaque device address).
Whole-array transfers are counted in ``transfers`` ("to_device": ``asarray`` and friends
of host data; "to_host": ``get``, ``asnumpy``, ``tolist``, ``tobytes``, ``repr``), and
synchronising scalar reads (``int``, ``float``, ``bool``, ``item``, ``operator.index``)
in ``scalar_transfers["to_host"]``, so a test can tell one from the other.
"""
from __future__ import annotations

import ctypes
import operator
import types
import weakref

import numpy as np

from . import harness

__version__ = "0.0+fastzsl.cuda_host"
IS_FAKE = True

float32, float64, int32, int64, bool_ = np.float32, np.float64, np.int32, np.int64, np.bool_
transfers = {"to_device": 0, "to_host": 0}
scalar_transfers = {"to_host": 0}
launches: list[tuple[str, tuple, tuple, int]] = []  # (kernel, grid, block, shared_mem)
sources: list[str] = []  # the code of every RawModule, as the backend handed it over

# An H100 SXM (sm_90) as cudaDeviceProp / cupy Device.attributes report it.
ATTRIBUTES = {
    "MultiProcessorCount": 132,
    "MaxSharedMemoryPerBlock": 48 * 1024,
    "MaxSharedMemoryPerBlockOptin": 227 * 1024,
    "MaxSharedMemoryPerMultiprocessor": 228 * 1024,
    "MaxThreadsPerBlock": 1024,
    "MaxThreadsPerMultiProcessor": 2048,
    "MaxBlockDimX": 1024, "MaxBlockDimY": 1024, "MaxBlockDimZ": 64,
    "MaxGridDimX": 2**31 - 1, "MaxGridDimY": 65535, "MaxGridDimZ": 65535,
    "WarpSize": 32,
    "MaxRegistersPerBlock": 65536,
    "ComputeCapabilityMajor": 9, "ComputeCapabilityMinor": 0,
    "ClockRate": 1980000,
    "L2CacheSize": 50 * 2**20,
}
_current_device = [0]


def reset_counters():
    transfers["to_device"] = transfers["to_host"] = 0
    scalar_transfers["to_host"] = 0
    launches.clear()
    sources.clear()
    _Cublas.calls.clear()


# --- arrays ---------------------------------------------------------------------------------


class ndarray:
    """A device array: a NumPy array that NumPy may not read implicitly."""

    __module__ = "cupy"  # fastzsl._array.array_kind recognises arrays by their module

    def __init__(self, data: np.ndarray, device_id: int | None = None):
        self._data = data
        self._device_id = _current_device[0] if device_id is None else device_id

    shape = property(lambda self: self._data.shape)
    dtype = property(lambda self: self._data.dtype)
    ndim = property(lambda self: self._data.ndim)
    size = property(lambda self: self._data.size)
    nbytes = property(lambda self: self._data.nbytes)
    strides = property(lambda self: self._data.strides)
    flags = property(lambda self: self._data.flags)
    device = property(lambda self: cuda.Device(self._device_id))
    T = property(lambda self: ndarray(self._data.T, self._device_id))

    @property
    def data(self):
        """A device pointer (``.ptr``), as CuPy's MemoryPointer: only the fake cuBLAS
        reads through it."""
        return _DevicePointer(self._data)

    def __len__(self):
        return len(self._data)

    def __repr__(self):  # CuPy copies the data to the host to print it
        transfers["to_host"] += 1
        return f"fake_cupy.ndarray({self._data!r})"

    __str__ = __repr__

    def __array__(self, *args, **kwargs):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    # NumPy ufuncs (np.isfinite(x), numpy_array + x) refuse device arrays instead of
    # reading them; Python operators then fall to ndarray's own reflected methods.
    __array_ufunc__ = None

    def get(self, stream=None):
        transfers["to_host"] += 1
        return self._data.copy()

    def copy(self):
        return ndarray(self._data.copy(), self._device_id)

    # DLPack, as far as this stand-in goes: the "capsule" is the array itself (same memory,
    # no transfer); ``from_dlpack`` here and the tests' patched ``torch.from_dlpack`` take it.
    def __dlpack__(self, stream=None, **kwargs):
        return self

    def __dlpack_device__(self):
        return (_DLPACK_CUDA, self._device_id)

    def astype(self, dtype, copy=True):
        if not copy and self._data.dtype == np.dtype(dtype):
            return self
        return ndarray(self._data.astype(dtype), self._device_id)

    def reshape(self, *shape):
        return ndarray(self._data.reshape(*shape), self._device_id)

    def __getitem__(self, index):
        return ndarray(self._data[_unwrap(index)], self._device_id)

    def __setitem__(self, index, value):
        if isinstance(value, np.ndarray):
            raise TypeError("assigning a NumPy array to a cupy array needs cupy.asarray first")
        self._data[_unwrap(index)] = _unwrap(value)

    def __getattr__(self, name):  # reductions and other methods: NumPy's, on the device
        if name.startswith("_") or name in _HOST_MEMORY:
            raise AttributeError(f"fake cupy: ndarray.{name} would expose host memory")
        value = getattr(self._data, name)
        if callable(value):
            return _on_device(value)
        return _wrap(value)

    def tolist(self):
        transfers["to_host"] += 1
        return self._data.tolist()

    def tobytes(self, order="C"):
        transfers["to_host"] += 1
        return self._data.tobytes(order)

    def _scalar(self, convert):  # a synchronising device-to-host copy, as in CuPy
        scalar_transfers["to_host"] += 1
        return convert(self._data)

    def __int__(self):
        return self._scalar(int)

    def __index__(self):
        return self._scalar(operator.index)

    def __float__(self):
        return self._scalar(float)

    def __bool__(self):
        return self._scalar(bool)

    def item(self, *args):
        return self._scalar(lambda data: data.item(*args))

    def __invert__(self):
        return ndarray(~self._data, self._device_id)

    def __abs__(self):
        return ndarray(abs(self._data), self._device_id)

    def __neg__(self):
        return ndarray(-self._data, self._device_id)


def _operator(name):
    def op(self, other):
        if isinstance(other, np.ndarray):
            raise TypeError(f"{name}: a cupy array and a NumPy array")
        return ndarray(np.asarray(getattr(self._data, name)(_unwrap(other))), self._device_id)
    return op


# What ndarray never hands out: NumPy's host buffer, pointer, base array and iterator.
_HOST_MEMORY = frozenset({"ctypes", "base", "flat", "tofile", "dump", "dumps"})

for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "and", "or", "xor",
              "matmul"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
    setattr(ndarray, f"__r{_name}__", _operator(f"__r{_name}__"))
for _name in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(ndarray, f"__{_name}__", _operator(f"__{_name}__"))
ndarray.__hash__ = None


def _unwrap(x):
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x._data if isinstance(x, ndarray) else x


def _wrap(x):
    if isinstance(x, tuple):
        return tuple(_wrap(v) for v in x)
    return ndarray(x) if isinstance(x, (np.ndarray, np.generic)) else x


def _on_device(fn):
    """NumPy function ``fn`` on device arrays: arguments unwrapped, array results wrapped."""
    def call(*args, **kwargs):
        return _wrap(fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))
    return call


def __getattr__(name):
    """Anything else CuPy mirrors from NumPy (``arange``, ``stack``, ``lexsort``,
    ``matmul``, ``inf``, ...): NumPy's, over device arrays."""
    value = getattr(np, name)
    return _on_device(value) if callable(value) and not isinstance(value, type) else value


class _RandomState:
    def __init__(self, seed=None):
        self._rng = np.random.default_rng(seed)

    def standard_normal(self, size=None, dtype=float):
        return ndarray(np.asarray(self._rng.standard_normal(size, dtype=dtype)))

    def randint(self, low, high=None, size=None, dtype=int):
        low, high = (0, low) if high is None else (low, high)
        return ndarray(np.asarray(self._rng.integers(low, high, size=size, dtype=dtype)))

    def uniform(self, low=0.0, high=1.0, size=None, dtype=float):
        return ndarray(np.asarray(self._rng.uniform(low, high, size)).astype(dtype))


random = types.SimpleNamespace(RandomState=_RandomState)


def _to_device(x, dtype=None, copy=False):
    if isinstance(x, ndarray):
        data = x._data if dtype is None else x._data.astype(dtype, copy=False)
        if copy or not data.flags.c_contiguous:
            data = np.array(data, order="C", copy=True)
        return x if data is x._data else ndarray(data, x._device_id)
    transfers["to_device"] += 1
    return ndarray(np.array(x, dtype=dtype, copy=True, order="C"))


def asarray(x, dtype=None):
    return _to_device(x, dtype)


def array(x, dtype=None, copy=True):
    return _to_device(x, dtype, copy=copy)


def ascontiguousarray(x, dtype=None):
    return _to_device(x, dtype)


def asnumpy(x, stream=None):
    return x.get() if isinstance(x, ndarray) else np.asarray(x)


def empty(shape, dtype=float, order="C"):
    # Fresh device memory is not zeroed; NaN (0xff bytes) makes reads of unwritten output show.
    data = np.empty(shape, dtype=dtype, order=order)
    data.view(np.uint8).fill(0xFF)
    return ndarray(data)


def zeros(shape, dtype=float, order="C"):
    return ndarray(np.zeros(shape, dtype=dtype, order=order))


def from_dlpack(x):
    """A device array over the memory of ``x``, with no copy (so no transfer is counted).

    Only a producer this stand-in can represent is taken: one whose ``__dlpack__`` hands
    over a fake ``ndarray`` in place of a DLPack capsule, on a CUDA device (the tests'
    fake torch CUDA tensor, or an ``ndarray`` itself). Real DLPack capsules, and so real
    torch tensors, need CuPy on a GPU."""
    if isinstance(x, ndarray):
        return x
    device_type, device_id = x.__dlpack_device__()
    if device_type != _DLPACK_CUDA:
        raise BufferError(f"fake cupy: from_dlpack of a tensor on DLPack device type "
                          f"{device_type}, not CUDA ({_DLPACK_CUDA})")
    capsule = x.__dlpack__()
    if not isinstance(capsule, ndarray):
        raise NotImplementedError(
            "fake cupy: DLPack capsules of real tensors (CUDA torch) need CuPy and a GPU")
    return ndarray(capsule._data, int(device_id))


_DLPACK_CUDA = 2  # DLDeviceType kDLCUDA


# --- devices, streams, runtime --------------------------------------------------------------


class Device:
    def __init__(self, device=None):
        device = _current_device[0] if device is None else int(device)
        if device != 0:
            raise RuntimeError(f"cudaErrorInvalidDevice: device {device} (fake cupy has one)")
        self.id = device
        self._previous = []

    attributes = property(lambda self: dict(ATTRIBUTES))
    compute_capability = "90"

    def __enter__(self):
        self._previous.append(_current_device[0])
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self._previous.pop()

    def synchronize(self):
        pass  # launches are synchronous here

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return self.id


class Stream:
    null = None

    def __init__(self, non_blocking=False):
        self.ptr = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def synchronize(self):
        pass

    def use(self):
        return self


Stream.null = Stream()


class _Runtime:
    CUDA_R_32F = 0

    @staticmethod
    def getDeviceCount():
        return 1

    @staticmethod
    def getDeviceProperties(device):
        return {"name": b"fastzsl cuda_host (CPU execution, H100 SXM profile)",
                "multiProcessorCount": ATTRIBUTES["MultiProcessorCount"],
                "sharedMemPerBlockOptin": ATTRIBUTES["MaxSharedMemoryPerBlockOptin"],
                "totalGlobalMem": 80 * 2**30, "major": 9, "minor": 0}

    @staticmethod
    def runtimeGetVersion():
        return 0

    @staticmethod
    def driverGetVersion():
        return 0


class Event:
    """Host time at ``record``: the CPU harness runs every launch synchronously."""

    def __init__(self, *args, **kwargs):
        self.time = None

    def record(self, stream=None):
        import time

        self.time = time.perf_counter()

    def synchronize(self):
        pass


def _elapsed_ms(start, end):
    return (end.time - start.time) * 1e3


# --- cuBLAS (gemmEx, float32 only) ------------------------------------------------------------

_BUFFERS: "weakref.WeakValueDictionary[int, np.ndarray]" = weakref.WeakValueDictionary()


def _root(a: np.ndarray) -> np.ndarray:
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class _DevicePointer:
    """``ndarray.data``: ``ptr`` is the address of the array's first element; the buffer
    that holds it is remembered (weakly) so that gemmEx can find it again."""

    def __init__(self, data: np.ndarray):
        root = _root(data)
        if not root.flags.c_contiguous:
            raise TypeError("fake cupy: a device pointer into a non-contiguous buffer")
        _BUFFERS[root.ctypes.data] = root
        self.ptr = int(data.ctypes.data) if data.size else int(root.ctypes.data)


def _matrix(ptr: int, rows: int, cols: int, ld: int, write=False) -> np.ndarray:
    """The column-major rows x cols float32 matrix at device address ``ptr`` (leading
    dimension ``ld``), as a NumPy view; out-of-bounds access raises."""
    for start, root in list(_BUFFERS.items()):
        if start <= ptr < start + max(1, root.nbytes):
            break
    else:
        raise RuntimeError(f"fake cublas: {ptr:#x} is in no device array")
    if ld < max(1, rows):
        raise RuntimeError(f"fake cublas: CUBLAS_STATUS_INVALID_VALUE (ld {ld} < rows {rows})")
    offset = ptr - start
    end = offset + ((cols - 1) * ld + rows) * 4
    if offset % 4 or end > root.nbytes:
        raise RuntimeError(f"fake cublas: matrix at {ptr:#x} ({rows} x {cols}, ld {ld}) runs "
                           f"past its array ({root.nbytes} B)")
    flat = root.reshape(-1).view(np.uint8)
    view = np.ndarray((cols, ld), dtype=np.float32, buffer=flat, offset=offset,
                      strides=(ld * 4, 4))[:, :rows]
    return view.T  # (rows, cols)


def _tf32(x: np.ndarray) -> np.ndarray:
    """float32 ``x`` with its mantissa truncated to TF32's 10 bits."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    return (x.view(np.uint32) & np.uint32(0xFFFFE000)).view(np.float32)


class _Cublas:
    """``cupy.cuda.cublas`` as far as fastzsl uses it: gemmEx on float32 matrices, FP32
    compute types as NumPy's float32 matmul (float32 products and sums), FAST_TF32 with the
    inputs truncated to TF32 first."""

    CUBLAS_OP_N, CUBLAS_OP_T = 0, 1
    CUBLAS_GEMM_DEFAULT = -1
    CUBLAS_COMPUTE_32F, CUBLAS_COMPUTE_32F_PEDANTIC, CUBLAS_COMPUTE_32F_FAST_TF32 = 68, 69, 77
    calls: list = []  # (m, n, k, compute type) of every gemmEx

    def gemmEx(self, handle, transa, transb, m, n, k, alpha, A, Atype, lda, B, Btype, ldb,
               beta, C, Ctype, ldc, computeType, algo):
        if handle != _CUBLAS_HANDLE:
            raise RuntimeError("fake cublas: CUBLAS_STATUS_NOT_INITIALIZED (unknown handle)")
        if {Atype, Btype, Ctype} != {_Runtime.CUDA_R_32F}:
            raise NotImplementedError("fake cublas: gemmEx of float32 matrices only")
        fast = {self.CUBLAS_COMPUTE_32F: False, self.CUBLAS_COMPUTE_32F_PEDANTIC: False,
                self.CUBLAS_COMPUTE_32F_FAST_TF32: True}
        if computeType not in fast:
            raise NotImplementedError(f"fake cublas: compute type {computeType}")
        self.calls.append((m, n, k, computeType))
        a = _matrix(A, *((k, m) if transa else (m, k)), lda)
        b = _matrix(B, *((n, k) if transb else (k, n)), ldb)
        c = _matrix(C, m, n, ldc)
        a, b = (a.T if transa else a), (b.T if transb else b)
        if fast[computeType]:
            a, b = _tf32(a), _tf32(b)
        al = ctypes.c_float.from_address(alpha).value
        be = ctypes.c_float.from_address(beta).value
        product = np.matmul(np.ascontiguousarray(a), np.ascontiguousarray(b))
        c[...] = al * product if be == 0 else al * product + be * c  # beta 0: C not read


_CUBLAS_HANDLE = 0x0C0B1A5


cuda = types.SimpleNamespace(Device=Device, Stream=Stream, Event=Event, runtime=_Runtime(),
                             get_current_stream=lambda: Stream.null, cublas=_Cublas(),
                             get_cublas_handle=lambda: _CUBLAS_HANDLE,
                             get_elapsed_time=_elapsed_ms)


# --- kernels --------------------------------------------------------------------------------

_SCALARS = {"float32": (np.float32, ctypes.c_float), "float64": (np.float64, ctypes.c_double),
            "int32": (np.int32, ctypes.c_int32), "uint32": (np.uint32, ctypes.c_uint32),
            "int64": (np.int64, ctypes.c_int64), "uint64": (np.uint64, ctypes.c_uint64),
            "bool": (np.bool_, ctypes.c_bool), "uint8": (np.uint8, ctypes.c_uint8)}


class RawKernel:
    def __init__(self, library: harness.Library, name: str):
        self._library = library
        self.name = name
        self.signature = library.signatures[name]
        self.max_dynamic_shared_size_bytes = 0

    def _argument(self, position, ptype, value):
        """(ctypes value, array it points into) for one argument, checked against ptype."""
        where = f"kernel {self.name} argument {position} ({ptype})"
        if ptype.endswith("*"):
            if isinstance(value, ndarray):
                pointee = np.dtype(_SCALARS[ptype[:-1]][0])
                if value.dtype != pointee:
                    raise TypeError(f"{where}: array of {value.dtype}")
                if not value._data.flags.c_contiguous:
                    raise TypeError(f"{where}: array is not C-contiguous")
                return ctypes.c_void_p(value._data.ctypes.data), value
            if isinstance(value, np.uintp) and int(value) == 0:
                return ctypes.c_void_p(None), None
            raise TypeError(f"{where}: {type(value).__name__} {value!r}")
        np_type, c_type = _SCALARS[ptype]
        if isinstance(value, ndarray) or type(value) is not np_type:
            # CuPy would pass a Python int as int64 and a float as float64, whatever the
            # kernel declares; only the exact NumPy scalar type is accepted here.
            raise TypeError(f"{where}: {type(value).__name__} {value!r}")
        return c_type(value.item()), None

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if len(args) != len(self.signature):
            raise TypeError(f"kernel {self.name} takes {len(self.signature)} arguments "
                            f"({', '.join(self.signature)}), got {len(args)}")
        optin = ATTRIBUTES["MaxSharedMemoryPerBlockOptin"]
        allowed = max(ATTRIBUTES["MaxSharedMemoryPerBlock"], self.max_dynamic_shared_size_bytes)
        if shared_mem > min(allowed, optin):
            raise RuntimeError(
                f"CUDA_ERROR_INVALID_VALUE: kernel {self.name} launched with {shared_mem} B of "
                f"dynamic shared memory (max_dynamic_shared_size_bytes "
                f"{self.max_dynamic_shared_size_bytes}, opt-in limit {optin})")
        values = [self._argument(i, p, a) for i, (p, a) in enumerate(zip(self.signature, args))]
        argv = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v, _ in values])
        launches.append((self.name, grid, block, int(shared_mem)))
        self._library.launch(self.name, grid, block, shared_mem, argv)


class RawModule:
    def __init__(self, code=None, options=(), name_expressions=None, **kwargs):
        self.code = code
        self.options = tuple(options)
        sources.append(code)
        self._library = None

    def compile(self, log_stream=None):
        if self._library is None:
            self._library = harness.build(self.code)
        return self

    def get_function(self, name):
        self.compile()
        if name not in self._library.signatures:
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name}")
        return RawKernel(self._library, name)


class _MemoryPool:
    def free_all_blocks(self):
        pass

    def used_bytes(self):
        return 0


_POOL = _MemoryPool()


def get_default_memory_pool():
    return _POOL
