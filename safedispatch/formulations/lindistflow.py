"""Linearized DistFlow (LinDistFlow).

M. E. Baran and F. F. Wu, "Network reconfiguration in distribution systems for loss
reduction and load balancing", IEEE Trans. Power Delivery 4(2), 1989, 1401-1407 (the
DistFlow equations with the loss terms dropped).

On every branch ``i -> j`` with flow ``P_j + 1j Q_j`` from ``i`` into ``j``::

    P_j = -p_j + sum_{c child of j} P_c          (lossless flow conservation)
    Q_j = -q_j + sum_{c child of j} Q_c
    w_j = w_i - 2 (r_j P_j + x_j Q_j)            (w = squared voltage magnitude)

so voltages and flows are affine in the injections ``p, q`` (pu, positive into the network).

**Shunts.** The node injection ``q_j`` includes the constant shunt susceptance ``b_j``
(:attr:`TreeData.b_pu <safedispatch.formulations.tree.TreeData>`) as a constant reactive
injection *at 1 pu*: ``q_j = q_j(devices, loads) + b_j``. ``b_j`` holds half the shunt
susceptance of every branch at ``j`` (the pi model's charging of lines and cables, and the
magnetizing susceptance of transformers, which is negative) and the bus's fixed shunts. This is
how the simplified DistFlow of M. E. Baran and F. F. Wu, "Optimal sizing of capacitors placed
on a radial distribution system", IEEE Trans. Power Delivery 4(1), 1989, 735-743, treats shunt
capacitors. The exact AC term is ``b_j V_j^2``, so at ``V_j = 1 +/- 0.05`` pu the injection is
off by about 10 % of ``b_j``: a second-order effect on ``w``. On overhead feeders ``b_j`` is
negligible; on cable feeders it is not: a 20 kV cable of 250 nF/km charges about 31 kVAr per km,
and SimBench's ``1-MV-rural--0-sw`` (116 km of line) carries about 1.6 MVAr of charging, which
raises its voltages by up to 7e-3 pu. LinDistFlow keeps that; a model without ``b`` would miss
it. Shunt **conductances** (transformer iron losses, ``BusTable.shunt_p_mw``) are neglected,
like the series losses: they are small active loads (tens of kW on an MV feeder) whose effect on
voltage is of the same order as the dropped loss terms. The AC power flow
(:func:`~safedispatch.powerflow.run_powerflow`) and hence the AC certification model every
shunt exactly.

The templates take plain numbers (:class:`~safedispatch.formulations.tree.TreeData`) and an
*algebra* (CVXPY or Pyomo adapter from :mod:`safedispatch.backends`), so the same equations
build both models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from safedispatch.formulations.tree import TreeData

NAME = "lindistflow"
CITATION = "Baran & Wu, IEEE Trans. Power Delivery 4(2), 1989"


@dataclass
class NetworkVars:
    """Expressions of the network state over nodes 1..n-1 (branch into each node).

    Attributes:
        w: squared voltage magnitude.
        P, Q: flow at the sending end of the branch into the node (pu).
        l: squared current (SOCP only; None here).
    """

    w: Any
    P: Any
    Q: Any
    l: Any = None  # noqa: E741  (the papers' symbol)


def build(alg, tree: TreeData, p_inj, q_inj, w_source) -> NetworkVars:
    """Add the LinDistFlow equations.

    Args:
        alg: Modelling algebra (``safedispatch.backends.cvxpy_.CvxpyAlgebra`` or the Pyomo one).
        tree: The network.
        p_inj, q_inj: Injection expressions at nodes 1..n-1 (pu), length ``n-1``; ``q_inj``
            includes the constant shunt term ``tree.b_pu[1:]`` (line charging, transformer
            magnetizing, fixed bus shunts at 1 pu), added by the problem builders.
        w_source: Squared source voltage (a parameter).

    Returns:
        The network expressions.
    """
    m = tree.n - 1
    P = alg.var("P", m)
    Q = alg.var("Q", m)
    w = alg.var("w", m)
    C = tree.child_matrix
    alg.eq("flow_p", P - alg.matvec(C, P), -p_inj)
    alg.eq("flow_q", Q - alg.matvec(C, Q), -q_inj)
    A = C.T.tocsr()  # A @ w = parent's w for nodes whose parent is not the source
    drop = alg.mul(2 * tree.r_pu[1:], P) + alg.mul(2 * tree.x_pu[1:], Q)
    alg.eq("voltage", w - alg.matvec(A, w) + drop, alg.mul(tree.source_children, w_source))
    return NetworkVars(w=w, P=P, Q=Q)


def affine_maps(tree: TreeData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Dense affine form: ``w = w_source + Rw @ p + Xw @ q`` and ``P = -S @ p``, ``Q = -S @ q``
    over nodes 1..n-1.

    Returns:
        ``(Rw, Xw, S)``, each ``(n-1, n-1)``: ``Rw = 2 S^T diag(r) S``, ``Xw = 2 S^T diag(x) S``.
    """
    S = tree.path_matrix
    Rw = 2.0 * S.T @ (tree.r_pu[1:, None] * S)
    Xw = 2.0 * S.T @ (tree.x_pu[1:, None] * S)
    return Rw, Xw, S
