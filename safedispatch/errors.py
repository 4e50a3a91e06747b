"""Typed errors of safedispatch.

Every error about bad input is a :class:`SafeDispatchError` *and* a ``ValueError``
(``NetworkDataError``, ``InputError``), so callers can catch either. Solver and
infeasibility outcomes are statuses in results; :class:`SolverError` is raised only where
a caller asked for it. Each error names the offending field in ``.field``.
"""

from __future__ import annotations

import math

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


def finite_vector(value, n: int, name: str, *, integer: bool = False, max_abs: float | None = None) -> np.ndarray:
    """A finite float (or integer) vector of length ``n``; raises InputError naming ``name``.

    With ``max_abs``, entries of larger magnitude are rejected too (e.g. ``MAX_ABS_POWER_MW``).
    Complex input is rejected, never cast (numpy would drop the imaginary part).
    """
    if np.iscomplexobj(value) or (hasattr(value, "is_complex") and callable(value.is_complex)
                                  and value.is_complex()):
        raise InputError("expected real numbers, got complex values", name)
    try:
        a = np.asarray(value, dtype=float)
    except (TypeError, ValueError) as exc:
        raise InputError(f"expected real numbers: {exc}", name) from None
    if a.shape != (n,):
        raise InputError(f"expected shape ({n},), got {a.shape}", name)
    if not math.isfinite(a.sum()) and not np.isfinite(a).all():  # one reduction in the common case
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
