"""Shipped profiles, their mapping onto cases, the stochastic PV model and scenario reduction."""

from __future__ import annotations

import hashlib
import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.scenarios import (
    case_profiles,
    fit_clear_sky_index,
    forward_selection,
    load_profiles,
    pv_scenarios,
    split_days,
)
from safedispatch.scenarios.irradiance import fit_ar1
from safedispatch.scenarios.profiles import DATA


def test_extract_matches_its_provenance_record():
    prov = json.loads((DATA.parent / "PROVENANCE.json").read_text())
    assert hashlib.sha256(DATA.read_bytes()).hexdigest() == prov["extract_sha256"]
    assert {s["file"].split("/")[0] for s in prov["sources"]} == {"simbench", "pvanalytics"}
    assert (DATA.parent / "LICENSES.md").read_text().count("ODbL") >= 1
    assert DATA.stat().st_size < 5e6


def test_profiles_load_without_the_source_packages_or_network():
    """A fresh interpreter where importing simbench or pvanalytics fails still loads the data."""
    code = ("import sys; sys.modules['simbench'] = None; sys.modules['pvanalytics'] = None; "
            "sys.modules['pandas'] = None; import socket\n"
            "def _no(*a, **k): raise OSError('network used')\n"
            "socket.socket.connect = _no\n"
            "from safedispatch.scenarios import load_profiles; p = load_profiles(); "
            "print(p.load_p.shape, p.pv_measured.shape)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "(35136, 10) (35136,)" in out.stdout


def test_profiles_are_sane():
    p = load_profiles()
    assert p.load_p.shape == (35136, len(p.load_names)) and p.pv_simbench.shape == (35136, 8)
    assert np.isfinite(p.load_p).all() and np.isfinite(p.pv_measured).all()
    assert p.pv_measured.min() >= 0 and p.pv_measured.max() == pytest.approx(1.0)
    day = p.pv_measured.reshape(366, 96)
    # PV is zero at local midnight and produces around noon on most days
    assert day[:, 0].max() == 0 and (day[:, 44:52].max(axis=1) > 0.1).mean() > 0.9
    # standard load profiles (households etc.) peak at 1 by SimBench's normalization
    std = [i for i, n in enumerate(p.load_names) if not n.startswith("mv_")]
    np.testing.assert_allclose(p.load_p[:, std].max(axis=0), 1.0, atol=1e-6)


def test_case_profiles_scale_to_the_case():
    f = sd.load_case("ieee33-paperB")
    cp = case_profiles(f, np.arange(366))
    tot = cp.load_p_mw.sum(axis=1)
    p0, q0 = f.nominal_injection()
    # the year's peak is the case's nominal load (paper B: 3.7 MW / 2.3 MVAr)
    assert tot.max() == pytest.approx(-p0.sum(), rel=1e-9) and tot.max() == pytest.approx(3.715, abs=1e-3)
    assert cp.load_q_mvar.sum(axis=1).max() == pytest.approx(2.3, abs=1e-3)
    assert cp.pv_avail_mw.shape == (366 * 96, 48)
    assert (cp.pv_avail_mw >= 0).all() and (cp.pv_avail_mw <= f.pv.p_max_mw + 1e-12).all()
    assert cp.pv_avail_mw.max() == pytest.approx(f.pv.p_max_mw.max())
    # every snapshot built from it validates
    snap = sd.Snapshot(load_p_mw=cp.load_p_mw[600], load_q_mvar=cp.load_q_mvar[600], pv_avail_mw=cp.pv_avail_mw[600])
    snap.checked(f)
    one = case_profiles(f, 10, load_profile=["H0-A"] * f.n_bus, pv_profile="PV3")
    assert one.load_p_mw.shape == (96, 33)


@pytest.mark.parametrize("kw,field", [
    ({"days": 366}, "days"), ({"days": [1.5]}, "days"), ({"days": 3, "load_profile": "nope"}, "load_profile"),
    ({"days": 3, "load_profile": ["H0-A"] * 3}, "load_profile"), ({"days": 3, "pv_profile": "PV9"}, "pv_profile"),
])
def test_case_profiles_bad_input(kw, field):
    with pytest.raises(sd.InputError) as e:
        case_profiles(sd.load_case("ieee33-paperC"), **kw)
    assert e.value.field == field


def test_date_split_is_disjoint_and_covers_every_month():
    parts = {s: split_days(s) for s in ("train", "validation", "test")}
    allq = np.concatenate(list(parts.values()))
    assert np.unique(allq).size == allq.size == 366
    months = (np.datetime64("2016-01-01") + np.arange(366)).astype("datetime64[M]").astype(int) % 12
    for d in parts.values():
        assert set(months[d]) == set(range(12))
    with pytest.raises(sd.InputError):
        split_days("dev")


def test_ar1_fit_recovers_known_parameters():
    """Independent reference: a series simulated from known parameters."""
    rng = np.random.default_rng(3)
    mu, phi, sigma, n = 0.6, 0.9, 0.1, 40_000
    k = np.empty(n)
    k[0] = mu
    for t in range(1, n):
        k[t] = mu + phi * (k[t - 1] - mu) + sigma * rng.standard_normal()
    valid = np.ones(n, bool)
    valid[::50] = False  # gaps (nights) break pairs
    m = fit_ar1(k, valid)
    assert m.mu == pytest.approx(mu, abs=0.01) and m.phi == pytest.approx(phi, abs=0.01)
    assert m.sigma == pytest.approx(sigma, rel=0.02)
    # the 5-minute process has the same stationary variance and autocorrelation per hour
    p5, s5 = m.at_step(5.0)
    assert p5**3 == pytest.approx(m.phi, rel=1e-12)
    assert s5**2 / (1 - p5**2) == pytest.approx(m.sigma**2 / (1 - m.phi**2), rel=1e-12)


def test_pv_scenarios_follow_the_fitted_process():
    model, env = fit_clear_sky_index()
    assert 0.2 < model.mu < 1.0 and 0.5 < model.phi < 1.0
    a = pv_scenarios(172, 400, seed=5, model=model, envelope=env)
    b = pv_scenarios(172, 400, seed=5, model=model, envelope=env)
    np.testing.assert_array_equal(a, b)  # deterministic under a seed
    assert not np.array_equal(a, pv_scenarios(172, 400, seed=6, model=model, envelope=env))
    assert a.shape == (400, 288) and a.min() >= 0 and a.max() <= 1
    # at noon the envelope is near 1: the scenarios' mean index matches the model's mean
    noon = slice(140, 148)
    e5 = np.interp(np.arange(288) * 5.0, np.arange(96) * 15.0, env[172])
    k = a[:, noon] / e5[noon]
    assert k.mean() == pytest.approx(model.mu, abs=0.05)
    # lag-1 (5 min) autocorrelation of the index matches phi_5 (unclipped region)
    phi5, _ = model.at_step(5.0)
    x, y = k[:, :-1].ravel(), k[:, 1:].ravel()
    assert np.corrcoef(x, y)[0, 1] == pytest.approx(phi5, abs=0.05)
    assert np.all(a[:, :12] == 0)  # night


def _kantorovich(x, p, kept):
    c = np.linalg.norm(x[:, None, :] - x[None, kept, :], axis=2)
    return float((p * c.min(axis=1)).sum())


def test_forward_selection_against_brute_force():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(12, 5))
    p = rng.uniform(0.5, 1.5, 12)
    p /= p.sum()
    best = {n: min(_kantorovich(x, p, list(c)) for c in itertools.combinations(range(12), n)) for n in (1, 2, 3)}
    dists = []
    for n in (1, 2, 3, 6, 12):
        r = forward_selection(x, n, p)
        assert r.prob.sum() == pytest.approx(1.0) and r.index.size == n == np.unique(r.index).size
        assert r.distance == pytest.approx(_kantorovich(x, p, list(r.index)))
        if n in best:
            assert r.distance >= best[n] - 1e-12
            assert r.distance <= 1.5 * best[n] + 1e-12  # greedy, near the optimum on this instance
        dists.append(r.distance)
    assert forward_selection(x, 1, p).distance == pytest.approx(best[1])  # the first step is exact
    assert all(a >= b for a, b in zip(dists, dists[1:])) and dists[-1] == pytest.approx(0.0)
    # each kept scenario receives the probability of the scenarios nearest to it
    r = forward_selection(x, 3, p)
    owner = r.index[np.argmin(np.linalg.norm(x[:, None] - x[None, r.index], axis=2), axis=1)]
    np.testing.assert_allclose(r.prob, [p[owner == k].sum() for k in r.index])


def test_paper_b_scenarios_reduce_500_to_50():
    s = pv_scenarios(180, 500, seed=0)
    r = forward_selection(s, 50)
    assert r.scenarios.shape == (50, 288) and r.prob.sum() == pytest.approx(1.0)
    assert r.distance < forward_selection(s, 10).distance


@pytest.mark.parametrize("args,field", [
    ((np.zeros((0, 3)), 1), "scenarios"), ((np.full((3, 2), np.nan), 1), "scenarios"),
    ((np.zeros((3, 2)), 4), "n"), ((np.zeros((3, 2)), 1, [0.5, 0.5, 0.5]), "prob")])
def test_forward_selection_bad_input(args, field):
    with pytest.raises(sd.InputError) as e:
        forward_selection(*args)
    assert e.value.field == field
