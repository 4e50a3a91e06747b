"""dispatch_metrics answers wrong types and absurd values with typed errors, and its results
stay finite (#18 items 12 and 13)."""

from __future__ import annotations

import numpy as np
import pytest

import safedispatch as sd
from safedispatch.metrics import dispatch_metrics


@pytest.fixture(scope="module")
def f():
    return sd.load_case("ieee33-paperB-4")


def test_wrong_types_and_absurd_values_are_typed(f):
    vm, loss = np.ones((3, f.n_bus)), np.full(3, 0.1)
    cases = [
        (lambda: dispatch_metrics(1.0, vm, loss), "feeder"),
        (lambda: dispatch_metrics(f, "x", loss), "vm_pu"),
        (lambda: dispatch_metrics(f, {"a": 1}, loss), "vm_pu"),
        (lambda: dispatch_metrics(f, None, loss), "vm_pu"),
        (lambda: dispatch_metrics(f, vm * (1 + 1j), loss), "vm_pu"),
        (lambda: dispatch_metrics(f, vm * 1e300, loss), "vm_pu"),
        (lambda: dispatch_metrics(f, -vm, loss), "vm_pu"),
        (lambda: dispatch_metrics(f, vm, (1, 2)), "p_loss_mw"),
        (lambda: dispatch_metrics(f, vm, loss * 1e300), "p_loss_mw"),
        (lambda: dispatch_metrics(f, vm, loss, dt_h="x"), "dt_h"),
        (lambda: dispatch_metrics(f, vm, loss, dt_h=1e300), "dt_h"),
        (lambda: dispatch_metrics(f, vm, loss, v_ref_pu=None), "v_ref_pu"),
        (lambda: dispatch_metrics(f, vm, loss, v_ref_pu=1e300), "v_ref_pu"),
        (lambda: dispatch_metrics(f, vm, loss, np.ones((3, 4)), np.full((3, 4), -1e300)), "pv_p_mw"),
        (lambda: dispatch_metrics(f, vm, loss, projection_status=np.full(3, 1e300)), "projection_status"),
    ]
    for call, field in cases:
        with pytest.raises(sd.InputError) as e:
            call()
        assert e.value.field == field, (field, e.value)


def test_results_are_finite_on_extreme_but_accepted_inputs(f):
    T = 4
    vm = np.full((T, f.n_bus), 9.9)
    out = dispatch_metrics(f, vm, np.full(T, 1e6), np.full((T, 4), 1e-300), np.full((T, 4), -1e6),
                           np.full((T, 4), 1e6), dt_h=24.0, v_ref_pu=0.5, correction_norm=np.full(T, 1e6),
                           projection_status=np.ones(T))
    assert all(np.isfinite(v) for v in out.values()), out
    torch = pytest.importorskip("torch")
    out2 = dispatch_metrics(f, torch.ones(T, f.n_bus, dtype=torch.bfloat16), torch.zeros(T, requires_grad=True))
    assert out2["max_vm_pu"] == 1.0
