"""Stochastic PV scenarios at 5-minute resolution (paper B: 288 steps a day, 500 scenarios
from an autoregressive model, reduced to 50).

Model: PV output = clear-sky envelope x clear-sky index. The envelope of each 15-minute step is
the largest measured output at that time of day within +-``window`` days (an empirical
clear-sky curve, no irradiance model needed); the clear-sky index ``k = pv / envelope`` of the
measured PV (daylight steps) follows an AR(1) process ``k_t - mu = phi (k_{t-1} - mu) + sigma
e_t``, fitted by least squares (conditional maximum likelihood for Gaussian ``e``) on pairs of
consecutive daylight steps. At 5 minutes the process keeps the same mean and stationary variance
with ``phi_5 = phi_15^(1/3)`` (the same autocorrelation per unit time). Scenario ``s`` of a day:
the day's envelope interpolated to 5 minutes times ``k_s``, clipped to ``[0, 1]`` per unit of the
measured system's peak (an index above 1 never makes output above the rating).

Deterministic under a seed (``numpy.random.default_rng``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safedispatch.errors import InputError
from safedispatch.scenarios.profiles import N_DAYS, STEPS_PER_DAY, load_profiles

__all__ = ["ARModel", "clear_sky_envelope", "fit_ar1", "fit_clear_sky_index", "pv_scenarios", "STEPS_5MIN"]

STEPS_5MIN = 288
#: daylight threshold (per unit of the envelope's peak) below which a step is night
DAYLIGHT = 0.05


@dataclass(frozen=True)
class ARModel:
    """AR(1) clear-sky-index model at 15-minute steps: mean ``mu``, coefficient ``phi``,
    innovation standard deviation ``sigma``, fitted on ``n`` pairs."""

    mu: float
    phi: float
    sigma: float
    n: int

    def at_step(self, minutes: float) -> tuple[float, float]:
        """``(phi, sigma)`` for steps of ``minutes`` with the same autocorrelation per unit time
        and the same stationary variance ``sigma^2 / (1 - phi^2)``."""
        phi = float(np.sign(self.phi) * abs(self.phi) ** (minutes / 15.0))
        var = self.sigma**2 / max(1.0 - self.phi**2, 1e-12)
        return phi, float(np.sqrt(var * (1.0 - phi**2)))


def clear_sky_envelope(pv: np.ndarray, window: int = 15) -> np.ndarray:
    """``(N_DAYS, 96)`` largest output at each time of day within +-``window`` days (cyclic).

    Args:
        pv: ``(N_DAYS * 96,)`` per-unit PV output.
        window: Half-width in days.
    """
    v = np.asarray(pv, float).reshape(N_DAYS, STEPS_PER_DAY)
    out = np.empty_like(v)
    for d in range(N_DAYS):
        rows = np.arange(d - window, d + window + 1) % N_DAYS
        out[d] = v[rows].max(axis=0)
    return out


def fit_ar1(k: np.ndarray, valid: np.ndarray) -> ARModel:
    """Least-squares AR(1) fit on consecutive pairs ``(k[t-1], k[t])`` where both are valid.

    Args:
        k: ``(T,)`` series.
        valid: ``(T,)`` boolean mask of usable values.

    Raises:
        InputError: fewer than 10 usable pairs.
    """
    k = np.asarray(k, float)
    valid = np.asarray(valid, bool)
    pair = valid[1:] & valid[:-1]
    x, y = k[:-1][pair], k[1:][pair]
    if x.size < 10:
        raise InputError(f"expected at least 10 consecutive valid pairs, got {x.size}", "k")
    X = np.stack([np.ones_like(x), x], axis=1)
    (c, phi), *_ = np.linalg.lstsq(X, y, rcond=None)
    resid = y - c - phi * x
    mu = c / (1.0 - phi) if abs(1.0 - phi) > 1e-9 else float(np.mean(y))
    return ARModel(mu=float(mu), phi=float(phi), sigma=float(np.std(resid, ddof=2)), n=int(x.size))


def fit_clear_sky_index(window: int = 15) -> tuple[ARModel, np.ndarray]:
    """The AR(1) model of the measured system's clear-sky index and its ``(N_DAYS, 96)``
    envelope."""
    pv = load_profiles().pv_measured
    env = clear_sky_envelope(pv, window)
    e = env.reshape(-1)
    day = e > DAYLIGHT * e.max()
    k = np.where(day, pv / np.where(day, e, 1.0), 0.0)
    return fit_ar1(k, day), env


def pv_scenarios(day: int, n: int = 500, seed: int = 0, model: ARModel | None = None,
                 envelope: np.ndarray | None = None) -> np.ndarray:
    """``(n, 288)`` PV output scenarios of one day at 5-minute steps, per unit of the
    measured system's peak (multiply by an inverter's ``p_max_mw``).

    Args:
        day: Day of year, 0..365 (sets the envelope, i.e. the season).
        n: Number of scenarios.
        seed: Seed of the noise.
        model, envelope: From :func:`fit_clear_sky_index` (fitted here when omitted).

    Raises:
        InputError: day outside 0..365 or n < 1.
    """
    if not (isinstance(day, (int, np.integer)) and 0 <= day < N_DAYS):
        raise InputError(f"expected a day in 0..{N_DAYS - 1}, got {day!r}", "day")
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise InputError(f"expected an integer >= 1, got {n!r}", "n")
    if model is None or envelope is None:
        model, envelope = fit_clear_sky_index()
    t15 = np.arange(STEPS_PER_DAY) * 15.0
    t5 = np.arange(STEPS_5MIN) * 5.0
    env5 = np.interp(t5, t15, envelope[day])
    phi, sigma = model.at_step(5.0)
    rng = np.random.default_rng(seed)
    k = np.empty((n, STEPS_5MIN))
    sd0 = sigma / np.sqrt(max(1.0 - phi**2, 1e-12))
    k[:, 0] = model.mu + sd0 * rng.standard_normal(n)
    eps = rng.standard_normal((n, STEPS_5MIN))
    for t in range(1, STEPS_5MIN):
        k[:, t] = model.mu + phi * (k[:, t - 1] - model.mu) + sigma * eps[:, t]
    return np.clip(env5[None, :] * k, 0.0, 1.0)
