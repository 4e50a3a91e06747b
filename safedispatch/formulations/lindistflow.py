"""Linearized DistFlow (LinDistFlow).

M. E. Baran and F. F. Wu, "Network reconfiguration in distribution systems for loss
reduction and load balancing", IEEE Trans. Power Delivery 4(2), 1989, 1401-1407 (the
DistFlow equations with the loss terms dropped).

On every branch ``i -> j`` with flow ``P_j + 1j Q_j`` from ``i`` into ``j``::

    P_j = -p_j + sum_{c child of j} P_c          (lossless flow conservation)
    Q_j = -q_j + sum_{c child of j} Q_c
    w_j = w_i - 2 (r_j P_j + x_j Q_j)            (w = squared voltage magnitude)

so voltages and flows are affine in the injections ``p, q`` (pu, positive into the network).
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
        p_inj, q_inj: Injection expressions at nodes 1..n-1 (pu), length ``n-1``.
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
