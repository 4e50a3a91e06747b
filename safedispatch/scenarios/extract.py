"""Builds the profile extract that ships with safedispatch (``data/profiles.npz``).

Run once by a maintainer, with the optional source packages installed::

    pip install simbench pvanalytics pyarrow
    python -m safedispatch.scenarios.extract

Sources (offline: both packages carry their data files):

* **SimBench** (``simbench`` package, dataset ``1-complete_data-mixed-all-0-sw``, year 2016,
  15-minute resolution, 35 136 steps): the standard load profiles listed in
  :data:`LOAD_PROFILES` (active and reactive power, each normalized by SimBench to a yearly
  active peak of 1) and the PV profiles ``PV1`` .. ``PV8``. Licence: Open Database License
  (ODbL) 1.0, contents under the Database Contents License 1.0; (c) University of Kassel,
  TU Dortmund, RWTH Aachen University and Fraunhofer IEE. See ``data/LICENSES.md``.
* **Measured PV** (``pvanalytics`` package, MIT licence; file
  ``system_50_ac_power_2_full_DST.parquet``, AC power of PV system 50 of the NREL PV
  Fleet Performance Data Initiative, 15-minute, fixed UTC-7): calendar year 2012 (a leap year
  like 2016, so both series have 366 days). Cleaning, recorded in the provenance file: the
  series is put on the full 15-minute grid, gaps of at most 2 h are interpolated linearly,
  nights (zero output both sides) are zero, and days that still miss values are replaced by
  the nearest complete day, values below 0.1 % of the peak (standby draw, sensor noise) are
  zero; the result is divided by its maximum (so it peaks at exactly 1).

The output is float32 and compressed (about 2 MB). ``data/PROVENANCE.json`` records the
sources, package versions, the sha256 of every source file read, the cleaning counts and the
sha256 of the extract itself; a test checks the extract against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent / "data"
EXTRACT = DATA_DIR / "profiles.npz"
PROVENANCE = DATA_DIR / "PROVENANCE.json"

SIMBENCH_DATASET = "1-complete_data-mixed-all-0-sw"
#: SimBench load profiles kept: households (H0-A/B/C), trade and commerce (G0-A, G1-A),
#: agriculture (L0-A) and the aggregated MV feeder profiles
LOAD_PROFILES = ("H0-A", "H0-B", "H0-C", "G0-A", "G1-A", "L0-A", "mv_rural", "mv_semiurb", "mv_urban", "mv_comm")
PV_PROFILES = tuple(f"PV{k}" for k in range(1, 9))
MEASURED_FILE = "system_50_ac_power_2_full_DST.parquet"
MEASURED_YEAR = 2012
N_STEPS = 366 * 96
MAX_GAP_STEPS = 8  # 2 h
NOISE_FLOOR = 1e-3  # of the peak: 3 W on the 3.4 kW system


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _simbench(prov: dict) -> dict:
    import pandas as pd
    import simbench

    folder = Path(simbench.__file__).resolve().parent / "networks" / SIMBENCH_DATASET
    out = {}
    for name in ("LoadProfile.csv", "RESProfile.csv"):
        path = folder / name
        prov["sources"].append({"file": f"simbench/networks/{SIMBENCH_DATASET}/{name}", "sha256": _sha256(path)})
        df = pd.read_csv(path, sep=";")
        if len(df) != N_STEPS:
            raise RuntimeError(f"{name}: expected {N_STEPS} rows, got {len(df)}")
        out[name] = df
    lp, rp = out["LoadProfile.csv"], out["RESProfile.csv"]
    load_p = np.stack([lp[f"{k}_pload"].to_numpy(float) for k in LOAD_PROFILES], axis=1)
    load_q = np.stack([lp[f"{k}_qload"].to_numpy(float) for k in LOAD_PROFILES], axis=1)
    pv = np.stack([rp[k].to_numpy(float) for k in PV_PROFILES], axis=1)
    start = pd.to_datetime(lp["time"].iloc[0], format="%d.%m.%Y %H:%M")
    prov["simbench"] = {"dataset": SIMBENCH_DATASET, "version": simbench.__version__, "start": str(start),
                        "load_profiles": list(LOAD_PROFILES), "pv_profiles": list(PV_PROFILES)}
    return {"load_p": load_p, "load_q": load_q, "pv_simbench": pv}


def _measured(prov: dict) -> np.ndarray:
    import importlib.resources

    import pandas as pd
    import pvanalytics

    path = Path(str(importlib.resources.files("pvanalytics") / "data" / MEASURED_FILE))
    prov["sources"].append({"file": f"pvanalytics/data/{MEASURED_FILE}", "sha256": _sha256(path)})
    df = pd.read_parquet(path)
    s = df.set_index(pd.to_datetime(df["measured_on"]))["ac_power_2"].astype(float)
    idx = pd.date_range(f"{MEASURED_YEAR}-01-01", periods=N_STEPS, freq="15min", tz=s.index.tz)
    s = s[~s.index.duplicated()].reindex(idx)
    n_missing = int(s.isna().sum())
    s = s.interpolate(limit=MAX_GAP_STEPS, limit_area="inside")
    v = s.to_numpy(float).reshape(366, 96)
    bad_days = np.flatnonzero(np.isnan(v).any(axis=1))
    # leading/trailing night gaps: a day's first and last values are night (zero output)
    for d in bad_days:
        row = v[d]
        nan = np.isnan(row)
        lit = np.flatnonzero(~nan & (row > 0))
        if lit.size and not nan[lit[0]:lit[-1] + 1].any():
            row[nan] = 0.0  # only night values missing
    bad_days = np.flatnonzero(np.isnan(v).any(axis=1))
    good = np.setdiff1d(np.arange(366), bad_days)
    replaced = []
    for d in bad_days:
        near = good[np.argmin(np.abs(good - d))]
        v[d] = v[near]
        replaced.append([int(d), int(near)])
    peak = float(np.nanmax(v))
    # inverter standby draw (negative) and sensor noise (a few W) are not generation
    v[v < NOISE_FLOOR * peak] = 0.0
    prov["measured_pv"] = {"package": "pvanalytics", "version": pvanalytics.__version__, "file": MEASURED_FILE,
                           "year": MEASURED_YEAR, "utc_offset": "-07:00", "missing_values": n_missing,
                           "days_replaced_by_nearest_complete_day": replaced, "peak_w": peak,
                           "noise_floor_pu": NOISE_FLOOR,
                           "note": "values below noise_floor_pu x peak (standby draw, sensor noise) set to 0; "
                                   "divided by the peak"}
    return (v / peak).reshape(-1)


def build(out_dir: Path = DATA_DIR) -> dict:
    """Read the sources, write ``profiles.npz`` and ``PROVENANCE.json`` atomically, return the
    provenance record."""
    prov: dict = {"sources": [], "resolution_min": 15, "n_steps": N_STEPS}
    sb = _simbench(prov)
    measured = _measured(prov)
    arrays = {k: v.astype(np.float32) for k, v in sb.items()}
    arrays["pv_measured"] = measured.astype(np.float32)
    arrays["load_names"] = np.array(LOAD_PROFILES)
    arrays["pv_names"] = np.array(PV_PROFILES)
    for k, v in arrays.items():
        if v.dtype.kind == "f" and not np.isfinite(v).all():
            raise RuntimeError(f"{k}: non-finite values after cleaning")
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".npz")
    os.close(fd)
    np.savez_compressed(tmp, **arrays)
    prov["extract_sha256"] = _sha256(Path(tmp))
    os.replace(tmp, out_dir / EXTRACT.name)
    fd, tmp = tempfile.mkstemp(dir=out_dir, suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(prov, fh, indent=1)
        fh.write("\n")
    os.replace(tmp, out_dir / PROVENANCE.name)
    return prov


if __name__ == "__main__":
    p = build()
    print(f"wrote {EXTRACT} ({EXTRACT.stat().st_size / 1e6:.2f} MB), sha256 {p['extract_sha256'][:12]}...")
