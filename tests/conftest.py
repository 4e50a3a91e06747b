"""Shared test helpers: pandapower as the independent reference."""

from __future__ import annotations

import numpy as np
import pytest


def pp_powerflow(feeder, p_mw, q_mvar, shunt_q_mvar=None, v_root_pu=None):
    """Solve one scenario with pandapower's Newton-Raphson on the feeder's own network.

    Returns the solved pandapower net (res_bus, res_line, res_ext_grid, ...).
    """
    import pandapower as pp

    import safedispatch as sd

    net = sd.to_pandapower(feeder, p_mw, q_mvar, shunt_q_mvar=shunt_q_mvar)
    if v_root_pu is not None:
        net.ext_grid["vm_pu"] = v_root_pu
    pp.runpp(net, tolerance_mva=1e-10, max_iteration=50)
    return net


def random_injection(feeder, rng, load=(0.0, 1.5), pv=(0.0, 1.0), extra_gen_mw=0.0):
    """Nominal load scaled per bus, PV at a random fraction of peak, optional extra generation
    per bus (for heavy reverse flow)."""
    p0, q0 = feeder.nominal_injection()
    p = p0 * rng.uniform(*load, feeder.n_bus)
    q = q0 * rng.uniform(*load, feeder.n_bus)
    np.add.at(p, feeder.pv.bus, rng.uniform(*pv, feeder.n_pv) * feeder.pv.p_max_mw)
    if extra_gen_mw:
        gen = rng.uniform(0, extra_gen_mw, feeder.n_bus)
        gen[feeder.root_bus] = 0.0
        p = p + gen
    return p, q


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def small_socp(seed):
    """A small second-order-cone projection problem (variable named "x") for the solver-chain
    tests: the nearest point to a random r in the unit ball, under one linear row."""
    import cvxpy as cp

    x = cp.Variable(5, name="x")
    r = np.random.default_rng(seed).normal(size=5)
    return cp.Problem(cp.Minimize(cp.sum_squares(x - r)), [cp.norm(x) <= 1, x[0] + x[1] <= 0.1])
