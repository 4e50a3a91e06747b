"""Plain-number description of a radial (sub)network that the formulations are written on.

A :class:`TreeData` has nodes ``0..n-1`` in topological order (``parent[j] < j``); node 0 is
the **source**: the feeder's substation for a whole-feeder model, or the bus just upstream of a
zone for a zone model. Its squared voltage is a parameter and its own injection is not
modelled (the source supplies whatever the subtree draws). Every other node ``j`` has one
branch from ``parent[j]`` with per-unit impedance ``r_pu[j] + 1j x_pu[j]``.

Per-unit base: ``sn_mva`` (1 MVA in every built-in case, so MW and MVAr equal pu) and each
bus's ``vn_kv``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

__all__ = ["TreeData"]


@dataclass(frozen=True, eq=False)
class TreeData:
    """A radial network in per-unit, node 0 the source.

    Attributes:
        parent: ``(n,)`` parent node, -1 at node 0; ``parent[j] < j``.
        r_pu, x_pu: ``(n,)`` series impedance of the branch into each node (0 at node 0).
        b_pu: ``(n,)`` constant shunt susceptance per node, pu: reactive power injected at
            1 pu by the fixed shunts there (half of each adjacent in-service branch's shunt
            susceptance: line charging > 0, transformer magnetizing < 0; minus the bus's fixed
            shunt consumption ``BusTable.shunt_q_mvar``). Formulations add it to the node's
            reactive injection as a constant (see :mod:`~safedispatch.formulations.lindistflow`);
            shunt conductances are not represented.
        s_max_pu: ``(n,)`` apparent-power rating of the branch into each node (inf: none).
        vm_min_pu, vm_max_pu: ``(n,)`` voltage limits (node 0's are not enforced).
        bus: ``(n,)`` feeder bus index of each node.
        branch: ``(n,)`` feeder branch index into each node (-1 at node 0).
    """

    parent: np.ndarray
    r_pu: np.ndarray
    x_pu: np.ndarray
    b_pu: np.ndarray
    s_max_pu: np.ndarray
    vm_min_pu: np.ndarray
    vm_max_pu: np.ndarray
    bus: np.ndarray
    branch: np.ndarray

    @property
    def n(self) -> int:
        return len(self.parent)

    @cached_property
    def child_matrix(self) -> sp.csr_matrix:
        """``(n-1, n-1)`` over nodes 1..n-1: ``C[i-1, j-1] = 1`` iff ``parent[j] == i``."""
        j = np.flatnonzero(self.parent > 0)
        return sp.csr_matrix((np.ones(j.size), (self.parent[j] - 1, j - 1)), shape=(self.n - 1, self.n - 1))

    @cached_property
    def source_children(self) -> np.ndarray:
        """``(n-1,)`` 1.0 where the node's parent is the source (node 0)."""
        return (self.parent[1:] == 0).astype(float)

    @cached_property
    def path_matrix(self) -> np.ndarray:
        """``(n-1, n-1)`` dense over nodes 1..n-1: ``S[b, k] = 1`` iff node ``k`` lies in the
        subtree of node ``b`` (so the lossless flow into ``b`` is ``-S @ injection``)."""
        n = self.n
        S = np.zeros((n - 1, n - 1))
        for k in range(1, n):
            i = k
            while i > 0:
                S[i - 1, k - 1] = 1.0
                i = self.parent[i]
        return S
