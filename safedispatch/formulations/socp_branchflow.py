"""Second-order-cone relaxation of the branch flow (DistFlow) model.

M. Farivar and S. H. Low, "Branch flow model: relaxations and convexification - Part I",
IEEE Trans. Power Systems 28(3), 2013, 2554-2564.

On every branch ``i -> j`` with sending-end flow ``P_j + 1j Q_j`` and squared current
``l_j``::

    P_j - r_j l_j = -p_j + sum_{c child of j} P_c
    Q_j - x_j l_j = -q_j + sum_{c child of j} Q_c
    w_j = w_i - 2 (r_j P_j + x_j Q_j) + (r_j^2 + x_j^2) l_j
    P_j^2 + Q_j^2 <= w_i l_j                      (relaxed from equality: a rotated cone)

The relaxation is exact when the cone binds at the optimum (e.g. loss minimisation without
upper voltage limits binding); otherwise the solution carries fictitious losses and the
caller must check it with an AC power flow (the safety layer and the OPF baseline do).
"""

from __future__ import annotations

from safedispatch.formulations.lindistflow import NetworkVars
from safedispatch.formulations.tree import TreeData

NAME = "socp"
CITATION = "Farivar & Low, IEEE Trans. Power Systems 28(3), 2013"


def build(alg, tree: TreeData, p_inj, q_inj, w_source) -> NetworkVars:
    """Add the relaxed branch flow equations (see module docstring).

    Args:
        alg: Modelling algebra that supports rotated cones (CVXPY).
        tree: The network.
        p_inj, q_inj: Injection expressions at nodes 1..n-1 (pu).
        w_source: Squared source voltage (parameter).

    Returns:
        The network expressions, with ``l``.
    """
    m = tree.n - 1
    P = alg.var("P", m)
    Q = alg.var("Q", m)
    w = alg.var("w", m)
    l = alg.var("l", m, lb=0.0)  # noqa: E741  (the paper's symbol)
    r, x = tree.r_pu[1:], tree.x_pu[1:]
    C = tree.child_matrix
    alg.eq("flow_p", P - alg.mul(r, l) - alg.matvec(C, P), -p_inj)
    alg.eq("flow_q", Q - alg.mul(x, l) - alg.matvec(C, Q), -q_inj)
    A = C.T.tocsr()
    w_par = alg.matvec(A, w) + alg.mul(tree.source_children, w_source)
    alg.eq("voltage", w - w_par + alg.mul(2 * r, P) + alg.mul(2 * x, Q) - alg.mul(r**2 + x**2, l), 0.0)
    alg.rotated_cone("branch_cone", P, Q, w_par, l)
    return NetworkVars(w=w, P=P, Q=Q, l=l)
