"""The snapshot OPF problem: the projection's constraints with an economic objective.

Formulation-agnostic (LinDistFlow or SOCP branch flow from :mod:`safedispatch.formulations`)
and backend-agnostic: the device and network constraints are exactly those of
:class:`~safedispatch.problems.projection.ProjectionProgram` (built on the same algebra, so
there is one network model), and only the objective differs::

    minimise  c_loss  * losses_mw                       (SOCP: sum r l; LinDistFlow: sum r (P^2 + Q^2))
            + c_curt  * sum (avail_mw - p_mw)           (PV curtailment)
            + c_volt  * sum ((w - v_ref^2) / 2)^2       (~ sum (v - v_ref)^2, pu^2)
            + c_q     * sum q_mvar^2                    (inverter reactive usage, device cost)
            + c_ess   * sum e_mw^2                      (storage usage, device cost)
            + loss_penalty * losses_mw                  (SOCP repair only: a parameter, 0 normally)

Branch ratings: the SOCP model limits the squared current ``l <= i_max^2`` (pu, exact in the
branch flow model, what pandapower's ``max_loading_percent`` limits); LinDistFlow has no
current, so it keeps the projection's apparent-power limit ``sqrt(3) vn i_max``.

All terms are in MW-equivalent cost units per snapshot. The losses term is the relaxed branch
losses of Farivar & Low (2013) in the SOCP model and the quadratic DistFlow loss estimate
``r (P^2 + Q^2) / w`` at ``w = 1`` (Baran & Wu 1989) in the linear model.
"""

from __future__ import annotations

from dataclasses import astuple, dataclass

import numpy as np

from safedispatch.errors import InputError
from safedispatch.network.feeder import Feeder
from safedispatch.problems.projection import ProjectionProgram
from safedispatch.problems.zones import ModelNetwork

__all__ = ["OPFProgram", "OPFWeights", "PAPER_B_WEIGHTS", "resolve_weights"]


@dataclass(frozen=True)
class OPFWeights:
    """Objective weights of the snapshot OPF (cost units: 1 = one MW of losses).

    Attributes:
        loss: Per MW of active losses.
        curtailment: Per MW of curtailed PV (available minus injected).
        voltage: Per pu^2 of squared voltage deviation ``sum_j (v_j - v_ref)^2`` over buses.
        q_usage: Per MVAr^2 of inverter reactive power.
        ess_usage: Per MW^2 of storage power.
        v_ref_pu: Reference voltage of the deviation term.
    """

    loss: float = 1.0
    curtailment: float = 0.0
    voltage: float = 0.0
    q_usage: float = 0.0
    ess_usage: float = 0.0
    v_ref_pu: float = 1.0

    def __post_init__(self):
        for name in ("loss", "curtailment", "voltage", "q_usage", "ess_usage"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float, np.floating, np.integer)) and np.isfinite(v) and v >= 0):
                raise InputError(f"expected a finite weight >= 0, got {v!r}", f"weights.{name}")
        if not (np.isfinite(self.v_ref_pu) and self.v_ref_pu > 0):
            raise InputError(f"expected a finite voltage > 0, got {self.v_ref_pu!r}", "weights.v_ref_pu")


#: Paper B's objective terms (losses, curtailment opportunity cost, voltage deviation, device
#: costs; the paper gives no numbers, these are the project's): curtailing a MW costs 1.5 x a MW
#: lost (the energy is lost and must be bought back at a premium), 0.01 pu deviation at every bus
#: of ieee33 costs 32e-4 x 10 = 3.2 kW, and reactive usage a small wear cost.
PAPER_B_WEIGHTS = OPFWeights(loss=1.0, curtailment=1.5, voltage=10.0, q_usage=1e-3, ess_usage=1e-3)


def resolve_weights(objective) -> OPFWeights:
    """``"losses"``, ``"paperB"``, an :class:`OPFWeights` or a dict of its fields.

    Raises:
        InputError: anything else (field ``objective``).
    """
    if isinstance(objective, OPFWeights):
        return objective
    if isinstance(objective, str):
        if objective == "losses":
            return OPFWeights()
        if objective == "paperB":
            return PAPER_B_WEIGHTS
        raise InputError(f"expected 'losses', 'paperB', OPFWeights or a dict, got {objective!r}", "objective")
    if isinstance(objective, dict):
        try:
            return OPFWeights(**objective)
        except TypeError as exc:
            raise InputError(f"unknown weight: {exc}", "objective") from None
    raise InputError(f"expected 'losses', 'paperB', OPFWeights or a dict, got {type(objective).__name__}",
                     "objective")


class OPFProgram:
    """The snapshot OPF on one model network, built once on an algebra (see module docstring).

    Args:
        alg: A fresh algebra (CVXPY for either model; Pyomo for LinDistFlow).
        feeder: The feeder.
        mn: The model network.
        model: "lindistflow" or "socp".
        weights: Objective weights.
        scr_min: Minimum short-circuit ratio (None: off), as in the projection.

    Attributes:
        proj: The projection program holding the variables and constraints (its parameters are
            written by ``proj.set_snapshot``; its distance objective is not used).
        problem: The problem with the OPF objective.
    """

    def __init__(self, alg, feeder: Feeder, mn: ModelNetwork, model: str, weights: OPFWeights,
                 scr_min: float | None = None):
        self.weights, self.model = weights, model
        proj = ProjectionProgram(alg, feeder, mn, model, np.ones(feeder.n_pv), np.ones(feeder.n_ess), scr_min)
        self.proj = proj
        a, tree, sn, wt = alg, mn.tree, mn.sn_mva, weights
        net = proj.net
        r = tree.r_pu[1:]
        if net.l is not None:
            # branch ratings as what they are, current limits: l <= i_max^2 in pu (exact in the
            # branch flow model); the caller lifts the projection's apparent-power proxy
            # (sqrt(3) vn i_max, conservative above 1 pu) by setting its ``smax`` to BIG
            a.le("thermal_current", net.l, a.param("lmax", np.ones(tree.n - 1)))
            loss = sn * a.total(a.mul(r, net.l))
        else:
            loss = sn * (a.sum_squares(a.mul(np.sqrt(r), net.P)) + a.sum_squares(a.mul(np.sqrt(r), net.Q)))
        self.avail = a.param("avail_mw", np.zeros(mn.pv.size))
        obj = wt.loss * loss
        if wt.curtailment > 0 and mn.pv.size:
            obj = obj + wt.curtailment * a.total(self.avail - proj.p)
        if wt.voltage > 0:
            obj = obj + wt.voltage * a.sum_squares(0.5 * (net.w - wt.v_ref_pu**2))
        if wt.q_usage > 0 and mn.pv.size:
            obj = obj + wt.q_usage * a.sum_squares(proj.q)
        if wt.ess_usage > 0 and mn.ess.size:
            obj = obj + wt.ess_usage * a.sum_squares(proj.e)
        if net.l is not None:
            obj = obj + a.param("loss_penalty", 0.0, nonneg=True) * loss
        self.problem = a.problem(obj)

    @staticmethod
    def cost(weights: OPFWeights, loss_mw: float, curtail_mw: float, vm_pu, q_mvar, e_mw) -> float:
        """The objective evaluated at a state (e.g. an AC power flow's), same units.

        Args:
            loss_mw: Active losses (MW).
            curtail_mw: Total curtailed PV (MW).
            vm_pu: ``(n,)`` voltage magnitudes of the modelled buses (the source excluded).
            q_mvar, e_mw: Inverter reactive and storage set-points.
        """
        w = weights
        dev = 0.5 * (np.asarray(vm_pu) ** 2 - w.v_ref_pu**2)
        return float(w.loss * loss_mw + w.curtailment * curtail_mw + w.voltage * np.sum(dev**2)
                     + w.q_usage * np.sum(np.asarray(q_mvar) ** 2) + w.ess_usage * np.sum(np.asarray(e_mw) ** 2))

    @staticmethod
    def key(weights: OPFWeights) -> tuple:
        return astuple(weights)
