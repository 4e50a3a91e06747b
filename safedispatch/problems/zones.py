"""The network a model is built on: the whole feeder, or one zone (a subtree) with its
boundaries.

A zone's model (paper A's "local physical model") contains the zone's buses, the branch
from its upstream boundary bus (the model's source node, whose voltage is a parameter) and
the zone's internal branches. Branches from the zone into downstream zones are boundaries
too: the power they carry is a parameter, added to the load of the zone bus they leave from.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safedispatch.errors import InputError
from safedispatch.formulations.tree import TreeData
from safedispatch.network.feeder import Feeder

__all__ = ["ModelNetwork", "model_network"]


@dataclass(frozen=True, eq=False)
class ModelNetwork:
    """A :class:`TreeData` plus how it maps onto the feeder.

    Attributes:
        tree: The per-unit tree; node 0 is the source.
        zone: Zone index, or None for the whole feeder.
        node_of_bus: ``(n_bus,)`` node index of each feeder bus, -1 outside the model.
        pv: Indices of the feeder's inverters inside the model; ``pv_node`` their nodes.
        ess, ess_node: Same for storage.
        cap, cap_node: Same for capacitor banks.
        out_branch: Feeder branches leaving the model into downstream zones;
            ``out_node`` the model node they leave from.
        sn_mva: Base power.
    """

    tree: TreeData
    zone: int | None
    node_of_bus: np.ndarray
    pv: np.ndarray
    pv_node: np.ndarray
    ess: np.ndarray
    ess_node: np.ndarray
    cap: np.ndarray
    cap_node: np.ndarray
    out_branch: np.ndarray
    out_node: np.ndarray
    sn_mva: float

    def incidence(self, node: np.ndarray) -> np.ndarray:
        """Dense ``(n-1, len(node))`` 0/1 matrix placing device columns on nodes 1..n-1
        (a device at the source node, possible only at the substation, is dropped: the slack
        absorbs it)."""
        B = np.zeros((self.tree.n - 1, len(node)))
        ok = node > 0
        B[node[ok] - 1, np.flatnonzero(ok)] = 1.0
        return B


def model_network(feeder: Feeder, zone: int | None = None) -> ModelNetwork:
    """Build the model network of the whole feeder (``zone=None``) or of ``feeder.zones[zone]``.

    Raises:
        InputError: ``zone`` is not an index of ``feeder.zones``.
    """
    rs = feeder.radial
    br = feeder.branch
    if zone is None:
        members = np.ones(feeder.n_bus, dtype=bool)
        source = feeder.root_bus
    else:
        if not (isinstance(zone, (int, np.integer)) and 0 <= zone < len(feeder.zones)):
            raise InputError(f"expected a zone index in 0..{len(feeder.zones) - 1}, got {zone!r}", "zone")
        members = np.zeros(feeder.n_bus, dtype=bool)
        members[feeder.zones[zone]] = True
        heads = [j for j in feeder.zones[zone] if rs.parent[j] < 0 or not members[rs.parent[j]]]
        head = int(heads[0])
        source = head if rs.parent[head] < 0 else int(rs.parent[head])
    # nodes: the source, then the model's buses in breadth-first order (parents first)
    order = [b for b in rs.order if members[b] and b != source]
    buses = np.array([source, *order], dtype=np.int64)
    n = buses.size
    node_of_bus = np.full(feeder.n_bus, -1, dtype=np.int64)
    node_of_bus[buses] = np.arange(n)
    parent = np.full(n, -1, dtype=np.int64)
    parent[1:] = node_of_bus[rs.parent[buses[1:]]]
    if (parent[1:] < 0).any():  # cannot happen for validated zones
        raise InputError("zone is not a connected subtree", "zone")
    branch = np.full(n, -1, dtype=np.int64)
    branch[1:] = rs.parent_branch[buses[1:]]
    sn = feeder.sn_mva
    vn = feeder.bus.vn_kv
    zbase = vn[br.to_bus[branch[1:]]] ** 2 / sn
    r = np.zeros(n)
    x = np.zeros(n)
    r[1:] = br.r_ohm[branch[1:]] / zbase
    x[1:] = br.x_ohm[branch[1:]] / zbase
    s_max = np.full(n, np.inf)
    s_max[1:] = np.sqrt(3.0) * vn[buses[1:]] * br.i_max_ka[branch[1:]] / sn
    # constant shunt susceptance (Q injected at 1 pu): half of every in-service branch's
    # susceptance at each of its ends (line charging > 0, transformer magnetizing < 0), and the
    # buses' fixed shunts (consumption shunt_q_mvar at 1 pu, so -shunt_q_mvar injected). Shunt
    # conductances (iron losses, shunt_p_mw) are not in TreeData: LinDistFlow neglects them as it
    # neglects series losses.
    b = np.zeros(n)
    on = np.flatnonzero(br.in_service)
    half = 0.5 * br.b_us[on] * 1e-6 * vn[br.to_bus[on]] ** 2 / sn
    for ends in (br.from_bus[on], br.to_bus[on]):
        nd = node_of_bus[ends]
        np.add.at(b, nd[nd >= 0], half[nd >= 0])
    b -= np.asarray(feeder.bus.shunt_q_mvar, dtype=float)[buses] / sn
    tree = TreeData(parent=parent, r_pu=r, x_pu=x, b_pu=b, s_max_pu=s_max, vm_min_pu=feeder.bus.vm_min_pu[buses].copy(),
                    vm_max_pu=feeder.bus.vm_max_pu[buses].copy(), bus=buses, branch=branch)
    inside = members.copy()
    inside[source] = zone is None  # a zone's source bus belongs to the upstream zone
    pv = np.flatnonzero(inside[feeder.pv.bus])
    ess = np.flatnonzero(inside[feeder.ess.bus])
    cap = np.flatnonzero(inside[feeder.cap.bus])
    # boundary branches into downstream zones
    child = rs.branch_child
    out = np.flatnonzero((child >= 0) & ~members[np.maximum(child, 0)] & members[rs.parent[np.maximum(child, 0)]]
                         & (child != source))
    out = out[node_of_bus[rs.parent[child[out]]] >= 0]
    return ModelNetwork(tree=tree, zone=zone, node_of_bus=node_of_bus, pv=pv, pv_node=node_of_bus[feeder.pv.bus[pv]],
                        ess=ess, ess_node=node_of_bus[feeder.ess.bus[ess]], cap=cap,
                        cap_node=node_of_bus[feeder.cap.bus[cap]], out_branch=out,
                        out_node=node_of_bus[rs.parent[child[out]]], sn_mva=sn)
