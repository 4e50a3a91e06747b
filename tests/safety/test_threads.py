"""One layer shared by threads answers every call as the same calls made serially."""

from __future__ import annotations

import threading

import numpy as np
import torch

import safedispatch as sd
from safedispatch import ProjectionStatus as PS
from tests.safety.test_infeasible import _mixed_instances

N_THREADS = 4


def _threaded(fn, items, n_threads=N_THREADS):
    """``fn`` over ``items`` from ``n_threads`` threads (interleaved shares, started together);
    the results in item order and the exceptions raised, if any."""
    results = [None] * len(items)
    errors = []
    start = threading.Barrier(n_threads)

    def work(k):
        start.wait()
        for i in range(k, len(items), n_threads):
            try:
                results[i] = fn(items[i])
            except Exception as exc:  # noqa: BLE001  (collected: the test reports every one)
                errors.append((i, repr(exc)))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def _same(serial, shared):
    statuses = set()
    worst = 0.0
    for a, b in zip(serial, shared):
        assert a.status == b.status
        statuses.add(a.status)
        worst = max(worst, float(np.abs(a.action.to_vector() - b.action.to_vector()).max()))
    assert worst <= 1e-9, worst
    assert {PS.UNCHANGED, PS.PROJECTED, PS.INFEASIBLE} <= statuses


def test_safety_layer_shared_by_threads_answers_as_serially():
    f = sd.load_case("ieee33-paperB-4")
    inst = _mixed_instances(f, 2000, seed=41)
    reference = sd.SafetyLayer(f)
    serial = [reference.project(raw, snap) for raw, snap in inst]
    shared = sd.SafetyLayer(f)
    results, errors = _threaded(lambda it: shared.project(*it), inst)
    assert not errors, errors[:5]
    _same(serial, results)


def test_project_action_from_threads_answers_as_serially():
    f = sd.load_case("ieee33-paperB-4")
    inst = _mixed_instances(f, 2000, seed=43)
    reference = sd.SafetyLayer(f)
    serial = [reference.project(raw, snap) for raw, snap in inst]
    results, errors = _threaded(lambda it: sd.project_action(it[0], it[1], feeder=f), inst)
    assert not errors, errors[:5]
    _same(serial, results)


def _torch_batches(f, n, B, seed):
    """Batches of raw actions and per-sample loads: feasible, needing a projection, and (one in
    five) loads x5 to x20 that no set-point can carry."""
    rng = np.random.default_rng(seed)
    p0, q0 = f.nominal_injection()
    out = []
    for _k in range(0, n, B):
        scale = rng.uniform(0.2, 1.2, (B, 1))
        heavy = rng.uniform(size=(B, 1)) < 0.2
        scale = np.where(heavy, rng.uniform(5, 20, (B, 1)), scale)
        reach = rng.uniform(0.1, 1.3, (B, 1))
        raw = np.hstack([f.pv.s_mva * rng.uniform(0, 1, (B, f.n_pv)) * reach,
                         0.5 * f.pv.s_mva * rng.uniform(-1, 1, (B, f.n_pv)) * reach])
        out.append((torch.tensor(raw), torch.tensor(-p0[None] * scale), torch.tensor(-q0[None] * scale),
                    torch.tensor(f.pv.p_max_mw[None] * rng.uniform(0, 1, (B, f.n_pv)))))
    return out


def test_torch_layer_shared_by_threads_answers_as_serially():
    f = sd.load_case("ieee33-paperB-4")
    batches = _torch_batches(f, 2000, 16, seed=47)
    reference = sd.TorchSafetyLayer(f)
    serial = [reference(*b, return_status=True) for b in batches]
    shared = sd.TorchSafetyLayer(f)

    def call(b):
        safe, status = shared(*b, return_status=True)
        assert torch.equal(shared.last_status, status)  # per thread: this call's statuses
        return safe, status

    results, errors = _threaded(call, batches)
    assert not errors, errors[:5]
    seen = set()
    for (sa, sta), (sb, stb) in zip(serial, results):
        assert torch.equal(sta, stb)
        seen |= set(sta.tolist())
        assert float((sa - sb).abs().max()) <= 1e-9
    assert {int(PS.UNCHANGED), int(PS.PROJECTED), int(PS.INFEASIBLE)} <= seen
