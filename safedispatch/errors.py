"""Typed errors of safedispatch.

Every error about bad input is a :class:`SafeDispatchError` *and* a ``ValueError``
(``NetworkDataError``, ``InputError``), so callers can catch either. Solver and
infeasibility outcomes are statuses in results; :class:`SolverError` is raised only where
a caller asked for it. Each error names the offending field in ``.field``.
"""

from __future__ import annotations

import math
import sys

import numpy as np


class SafeDispatchError(Exception):
    """Base class of every error raised by safedispatch.

    Args:
        message: What was expected and what was got.
        field: Name of the offending field or argument (e.g. ``"branch.r_ohm"``), if any.
    """

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NetworkDataError(SafeDispatchError, ValueError):
    """Feeder data is inconsistent: unknown bus, NaN or negative rating, meshed or islanded
    network, zones that do not partition the feeder, unsupported pandapower element."""


class InputError(SafeDispatchError, ValueError):
    """A call argument has the wrong shape, dtype or a non-finite value."""


class InfeasibleError(SafeDispatchError):
    """No point satisfies the constraints (raised only where a caller asked to raise)."""


class SolverError(SafeDispatchError):
    """A numerical solver failed (raised only where a caller asked to raise)."""


class BackendUnavailableError(SafeDispatchError, ImportError):
    """An optional package needed for the requested feature is not installed."""


#: largest magnitude of any power (MW, MVAr) the library accepts as input: far beyond any distribution
#: feeder (absurd finite values such as 1e300 MW are rejected up front instead of overflowing or
#: stalling a solver)
MAX_ABS_POWER_MW = 1e6
#: accepted range of a substation (slack) voltage magnitude (pu)
V_ROOT_RANGE_PU = (0.5, 2.0)


def from_torch(t, name: str) -> np.ndarray:
    """A torch tensor's values as a numpy array (any real dtype, bfloat16 included); complex
    tensors and tensors that require grad (these entry points are not differentiable: detach
    them, or use :class:`~safedispatch.TorchSafetyLayer`) are InputErrors."""
    if t.is_complex():
        raise InputError("expected real numbers, got complex values", name)
    if t.requires_grad:
        raise InputError("expected a tensor without autograd history (this function is not differentiable): "
                         "pass tensor.detach()", name)
    t = t.detach().cpu()
    if t.dtype.is_floating_point:
        t = t.double()  # bfloat16 has no numpy dtype; every float widens exactly to float64
    return t.numpy()


def real_float_array(value, name: str) -> np.ndarray:
    """``value`` as a float64 array (torch tensors read by value, NaN and inf kept); complex
    values and anything not convertible to real numbers are an InputError naming ``name``."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        value = from_torch(value, name)
    try:
        if np.iscomplexobj(value):
            raise InputError("expected real numbers, got complex values", name)
        with np.errstate(over="ignore", invalid="ignore"):
            a = np.asarray(value, dtype=float)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001  (any conversion failure is bad input)
        raise InputError(f"expected real numbers: {type(exc).__name__}: {exc}", name) from None
    return a


def finite_vector(value, n: int, name: str, *, integer: bool = False, max_abs: float | None = None) -> np.ndarray:
    """A finite float (or integer) vector of length ``n``; raises InputError naming ``name``.

    Accepts anything array-like, torch tensors included (read by value). With ``max_abs``,
    entries of larger magnitude are rejected too (e.g. ``MAX_ABS_POWER_MW``). Complex input is
    rejected, never cast (numpy would drop the imaginary part); any conversion failure (strings,
    objects, Python integers too large for a float, tensors that require grad) is an InputError.
    The result may be ``value`` itself when it already is a float64 vector: never write into it.
    """
    if type(value) is np.ndarray and value.dtype == np.float64 and value.shape == (n,) and not integer:
        # fast path: one reduction (max |x| is NaN for NaN entries, inf for inf ones)
        if n == 0:
            return value
        m = np.abs(value).max()
        if m < math.inf and (max_abs is None or m <= max_abs):
            return value
    a = real_float_array(value, name)
    if a.shape != (n,):
        raise InputError(f"expected shape ({n},), got {a.shape}", name)
    if not np.isfinite(a).all():
        raise InputError(f"contains NaN or inf at positions {np.flatnonzero(~np.isfinite(a))[:5].tolist()}", name)
    if max_abs is not None and a.size and np.abs(a).max() > max_abs:
        bad = np.flatnonzero(np.abs(a) > max_abs)
        raise InputError(f"expected magnitudes <= {max_abs:g}, got {a[bad[:5]].tolist()} at positions "
                         f"{bad[:5].tolist()}", name)
    if integer:
        if np.any(a != np.round(a)):
            raise InputError("expected integer steps", name)
        return a.astype(np.int64)
    return a
