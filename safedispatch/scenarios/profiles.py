"""One year of 15-minute load and PV profiles, shipped with the package, mapped onto a case.

The data (``data/profiles.npz``, about 2 MB) is an extract of the SimBench standard profiles
(ODbL) and of one measured PV system from the pvanalytics sample data (MIT); how it was made,
from which files (with checksums) and under which licences is recorded in
``data/PROVENANCE.json`` and ``data/LICENSES.md`` (the script is
:mod:`safedispatch.scenarios.extract`). Loading needs neither package and no network.

Both sources cover a leap year (SimBench 2016, the measured PV 2012): 366 days of 96 steps,
indexed here by day of year 0..365 and step 0..95 (local time).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from safedispatch.errors import InputError
from safedispatch.network.feeder import Feeder

__all__ = ["Profiles", "CaseProfiles", "load_profiles", "case_profiles", "split_days", "N_DAYS", "STEPS_PER_DAY"]

DATA = Path(__file__).resolve().parent / "data" / "profiles.npz"
N_DAYS = 366
STEPS_PER_DAY = 96
#: day-of-month ranges of the date split (see :func:`split_days`)
SPLIT = {"train": (1, 21), "validation": (22, 26), "test": (27, 31)}


@dataclass(frozen=True, eq=False)
class Profiles:
    """The shipped profiles, ``T = 35 136`` steps of 15 minutes.

    Attributes:
        load_p, load_q: ``(T, n_types)`` SimBench load profiles (active power normalized to a
            yearly peak of 1 for the standard profiles; reactive in the same unit).
        load_names: ``(n_types,)`` profile names, e.g. ``"H0-A"`` (households), ``"mv_urban"``.
        pv_simbench: ``(T, 8)`` SimBench PV profiles ``PV1`` .. ``PV8`` (per unit of the
            installed peak power).
        pv_names: ``("PV1", ..., "PV8")``.
        pv_measured: ``(T,)`` measured AC output of one PV system in 2012, per unit of its
            yearly maximum.
    """

    load_p: np.ndarray
    load_q: np.ndarray
    load_names: tuple
    pv_simbench: np.ndarray
    pv_names: tuple
    pv_measured: np.ndarray


@lru_cache(maxsize=1)
def load_profiles() -> Profiles:
    """The shipped profiles (read once; arrays are read-only float64)."""
    with np.load(DATA, allow_pickle=False) as d:
        arr = {k: d[k] for k in d.files}
    out = {}
    for k in ("load_p", "load_q", "pv_simbench", "pv_measured"):
        a = arr[k].astype(np.float64)
        a.setflags(write=False)
        out[k] = a
    return Profiles(load_names=tuple(str(s) for s in arr["load_names"]),
                    pv_names=tuple(str(s) for s in arr["pv_names"]), **out)


@dataclass(frozen=True, eq=False)
class CaseProfiles:
    """Profiles of one case over whole days (``T = 96 * len(days)`` steps of 15 minutes).

    Attributes:
        days: ``(n_days,)`` day-of-year indices (0..365).
        load_p_mw, load_q_mvar: ``(T, n_bus)`` consumption per bus (loads minus uncontrolled
            generation, as :class:`~safedispatch.problems.types.Snapshot` carries them).
        pv_avail_mw: ``(T, n_pv)`` available PV power, within ``[0, pv.p_max_mw]``.
        dt_h: Step length (0.25 h).
    """

    days: np.ndarray
    load_p_mw: np.ndarray
    load_q_mvar: np.ndarray
    pv_avail_mw: np.ndarray
    dt_h: float = 0.25


def _days(days) -> np.ndarray:
    d = np.atleast_1d(np.asarray(days))
    if d.ndim != 1 or d.size == 0 or d.dtype.kind not in "iu":
        raise InputError(f"expected one or more integer days of year, got {days!r}", "days")
    if (d < 0).any() or (d >= N_DAYS).any():
        raise InputError(f"expected days in 0..{N_DAYS - 1}, got {d[(d < 0) | (d >= N_DAYS)][:5].tolist()}", "days")
    return d.astype(np.int64)


def case_profiles(feeder: Feeder, days, load_profile="mv_semiurb", pv_profile="measured") -> CaseProfiles:
    """The shipped profiles mapped onto a case's loads and PV for whole days.

    Loads: each bus's nominal consumption (``-feeder.nominal_injection()``) times its profile
    divided by the profile's yearly peak, so the case's nominal load is the yearly peak (paper
    B's 3.7 MW / 2.3 MVAr on ieee33); reactive power follows the active profile at the case's
    own power factor (the cases carry their papers' power factors; SimBench's reactive profiles
    describe German grids). PV: ``pv.p_max_mw`` times the PV profile.

    Args:
        feeder: The case.
        days: Day(s) of year, 0..365.
        load_profile: A name from ``load_profiles().load_names`` for every bus, or a sequence of
            ``n_bus`` names (one per bus).
        pv_profile: ``"measured"`` (the measured system, per unit of its yearly peak) or a
            SimBench name ``"PV1"`` .. ``"PV8"``, for every inverter, or a sequence of
            ``n_pv`` such names.

    Raises:
        InputError: unknown profile name, wrong number of names, days outside 0..365.
    """
    prof = load_profiles()
    d = _days(days)
    steps = (d[:, None] * STEPS_PER_DAY + np.arange(STEPS_PER_DAY)).reshape(-1)
    names = [load_profile] * feeder.n_bus if isinstance(load_profile, str) else list(load_profile)
    if len(names) != feeder.n_bus:
        raise InputError(f"expected one name or {feeder.n_bus} names, got {len(names)}", "load_profile")
    idx = []
    for nm in names:
        if nm not in prof.load_names:
            raise InputError(f"unknown load profile {nm!r}; expected one of {list(prof.load_names)}", "load_profile")
        idx.append(prof.load_names.index(nm))
    idx = np.array(idx)
    shape = prof.load_p[steps][:, idx] / prof.load_p[:, idx].max(axis=0)
    p0, q0 = feeder.nominal_injection()
    load_p = -p0[None, :] * shape
    load_q = -q0[None, :] * shape
    pv_names = [pv_profile] * feeder.n_pv if isinstance(pv_profile, str) else list(pv_profile)
    if len(pv_names) != feeder.n_pv:
        raise InputError(f"expected one name or {feeder.n_pv} names, got {len(pv_names)}", "pv_profile")
    cols = []
    for nm in pv_names:
        if nm == "measured":
            cols.append(prof.pv_measured[steps])
        elif nm in prof.pv_names:
            cols.append(prof.pv_simbench[steps, prof.pv_names.index(nm)])
        else:
            raise InputError(f"unknown PV profile {nm!r}; expected 'measured' or one of {list(prof.pv_names)}",
                             "pv_profile")
    pv = np.stack(cols, axis=1) if cols else np.zeros((steps.size, 0))
    avail = np.clip(pv, 0.0, 1.0) * feeder.pv.p_max_mw[None, :]
    return CaseProfiles(days=d, load_p_mw=load_p, load_q_mvar=load_q, pv_avail_mw=avail)


def split_days(split: str) -> np.ndarray:
    """Days of year (0..365, of the leap year of the data) in a split, by date: in every month
    days 1-21 train, 22-26 validation, 27-31 test, so each split covers every season and no day
    is in two splits.

    Raises:
        InputError: ``split`` not one of ``"train"``, ``"validation"``, ``"test"``.
    """
    if split not in SPLIT:
        raise InputError(f"expected one of {list(SPLIT)}, got {split!r}", "split")
    lo, hi = SPLIT[split]
    dates = np.datetime64("2016-01-01") + np.arange(N_DAYS)
    dom = (dates - dates.astype("datetime64[M]")).astype(int) + 1
    return np.flatnonzero((dom >= lo) & (dom <= hi))
