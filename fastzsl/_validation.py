"""Input checks, done once at the public boundary; kernels trust what passes here.

Dtype policy: float32 and float64 are kept; bool, integer and object arrays of numbers
become float64; float16 becomes float32; strings and other objects are refused with a
TypeError, complex numbers and sparse matrices too (sklearn's wording).
Non-contiguous arrays and read-only memory maps are accepted (copied only when not
C-contiguous; never written to).

Device input: with ``keep_device=True`` (the kernel API) a CuPy array is checked and
converted on its device, with the same rules and messages; only scalars (is everything
finite?) come to the host. A torch CUDA tensor is first made a CuPy array over the same
memory (DLPack, no copy) and then checked as one. Elsewhere every input is read into NumPy.
"""
from __future__ import annotations

import numbers

import numpy as np

from ._array import array_module, as_device_array, on_device, to_host

# Rows checked for NaN/inf at a time, so the check needs no full-size temporary.
_FINITE_CHECK_ROWS = 1 << 16


def as_float_matrix(X, name: str = "X", *, dtype=None, keep_device=False, finite=True):
    """Validate a 2-D float matrix and return it C-contiguous.

    Parameters
    ----------
    X : array-like of shape (n_samples, n_features)
    name : str
        Used in error messages.
    dtype : {np.float32, np.float64}, optional
        Cast to this dtype instead of applying the dtype policy.
    keep_device : bool, default=False
        Check and return a CuPy array on its device (a torch CUDA tensor comes back as a
        CuPy array over its memory; else the result is NumPy).
    finite : bool, default=True
        Check for NaN and infinity (:func:`check_finite`); False where the caller has that
        done elsewhere (a kernel that meets them at no cost).
    """
    device = keep_device and on_device(X)
    if device:
        X = as_device_array(X)
    else:
        if _is_sparse(X):
            raise TypeError(
                f"{name} is a sparse matrix; sparse input is not supported: pass a dense array"
            )
        X = to_host(X)
        if not isinstance(X, np.ndarray):
            X = np.asarray(X)
    if X.dtype.kind == "c":
        raise ValueError(f"Complex data not supported: {name} has dtype {X.dtype}")
    if X.dtype.kind == "O":
        try:  # object arrays of numbers are converted, anything else is refused
            X = X.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} has dtype object with non-numeric entries ({exc}); "
                "expected a real numeric array"
            ) from None
    kind = X.dtype.kind
    if kind not in "biuf":
        raise TypeError(
            f"{name} has dtype {X.dtype}; expected a real numeric array "
            "(float32/float64, or bool/integer/float16, which are converted)"
        )
    if X.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D of shape (n_samples, n_features), got {X.ndim}-D "
            f"array of shape {X.shape}" + (
                "; Reshape your data with X.reshape(1, -1) if it holds a single sample"
                if X.ndim == 1 else ""
            )
        )
    for axis, what in ((0, "sample"), (1, "feature")):
        if X.shape[axis] == 0:
            raise ValueError(
                f"{name} is empty: 0 {what}(s) (shape={X.shape}) while a minimum of 1 is "
                "required."
            )
    if dtype is None:
        if kind in "biu":
            dtype = np.float64
        elif X.dtype == np.float16:
            dtype = np.float32
        else:
            dtype = X.dtype
    if device:
        X = array_module(X).ascontiguousarray(X, dtype=dtype)
    else:
        X = np.ascontiguousarray(X, dtype=dtype)
    if finite:
        check_finite(X, name)
    return X


def _is_sparse(X) -> bool:
    from scipy import sparse

    return sparse.issparse(X)


def all_finite(X) -> bool:
    """Whether every entry of the NumPy float array ``X`` is finite, in one pass without
    temporaries where its sum is finite: NaN and infinities carry through every order of
    IEEE additions, so a finite sum has finite terms (the sum reads X at memory speed,
    about twice as fast as isfinite in blocks). A sum that is not finite (a NaN or
    infinity, or finite terms that overflowed) is checked again one block at a time."""
    with np.errstate(over="ignore", invalid="ignore"):
        if np.isfinite(X.sum()):
            return True
    return all(np.isfinite(X[start:start + _FINITE_CHECK_ROWS]).all()
               for start in range(0, X.shape[0], _FINITE_CHECK_ROWS))


def check_finite(X, name: str) -> None:
    """Raise a ValueError naming the first NaN or infinity in the 2-D array ``X`` (a CuPy
    array is checked on its device)."""
    if on_device(X):
        _check_finite_on_device(X, name)
        return
    if all_finite(X):
        return
    for start in range(0, X.shape[0], _FINITE_CHECK_ROWS):
        bad = ~np.isfinite(X[start:start + _FINITE_CHECK_ROWS])
        if bad.any():
            _raise_not_finite(X, name, start, bad)


def _check_finite_on_device(X, name: str) -> None:
    """:func:`check_finite` of a CuPy array, on its device: one scalar comes to the host
    (the n x d boolean temporary is an eighth of a float64 X)."""
    xp = array_module(X)
    bad = ~xp.isfinite(X)
    if bool(bad.any()):
        _raise_not_finite(X, name, 0, bad)


def _raise_not_finite(X, name, start, bad):
    """The error for the first True of ``bad`` (rows ``start``... of X), in row order."""
    row, col = divmod(int(bad.ravel().argmax()), X.shape[1])
    row += start
    raise ValueError(
        f"{name} contains NaN or infinity: {float(X[row, col])} at row {row}, column {col}"
    )


def as_float_vector(v, name: str, n: int, dtype=np.float64, *, keep_device=False):
    """Validate a 1-D array of length ``n`` (a CuPy one stays on its device with
    ``keep_device``)."""
    device = keep_device and on_device(v)
    if device:
        v = as_device_array(v)
    else:
        v = np.asarray(to_host(v))
    if v.dtype.kind not in "biuf":
        raise TypeError(f"{name} has dtype {v.dtype}; expected real numbers")
    v = (array_module(v) if device else np).ascontiguousarray(v, dtype=dtype)
    if v.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    return v


def check_same_width(X: np.ndarray, expected: int, name: str, owner: str) -> None:
    """The width check, worded as scikit-learn words it."""
    if X.shape[1] != expected:
        raise ValueError(
            f"{name} has {X.shape[1]} features, but {owner} is expecting {expected} "
            "features as input"
        )


def check_k(k, n_reference: int, *, exclude_self: bool = False, name: str = "k") -> int:
    """k must be an integer in [1, n_reference] (n_reference - 1 with self excluded)."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {k!r} ({type(k).__name__})")
    k = int(k)
    limit = n_reference - 1 if exclude_self else n_reference
    if k < 1:
        raise ValueError(f"{name} must be >= 1, got {name}={k}")
    if k > limit:
        detail = f"n_samples = {n_reference}" + (", minus the point itself" if exclude_self else "")
        raise ValueError(
            f"{name}={k} is larger than the data: at most {limit} neighbours exist "
            f"({detail})"
        )
    return k


def check_positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)


def check_option(value, options, name: str, *, allow_none: bool = False):
    """``value`` when it is one of ``options`` (or None, with ``allow_none``), else a
    ValueError that lists them."""
    if value is None and allow_none:
        return value
    try:
        if value in options:
            return value
    except TypeError:  # unhashable (a list, an array): not an option
        pass
    raise ValueError(f"{name} must be one of {tuple(options)}"
                     f"{' or None' if allow_none else ''}, got {value!r}")


def check_class_names(names, known, where: str) -> list:
    """``names`` as a list of str, each one of ``known`` and none repeated; else a
    ValueError naming the unknown (or repeated) names and what ``where`` has."""
    names = [str(name) for name in names]
    known = list(known)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"unknown class names {unknown}; {where} has {known}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ValueError(f"class names repeat: {repeated} in {names}")
    return names
