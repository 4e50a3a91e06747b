"""Benchmark: fidelity of ``sd.from_pandapower`` + ``sd.run_powerflow`` against pandapower ``runpp``.

For every radial (or radial-by-switches) test network that pandapower and SimBench ship offline,
the script converts the **original** net with ``sd.from_pandapower`` (or records the clear
rejection, with its message) and compares ``sd.run_powerflow`` on the feeder with
``pandapower.runpp`` on the original net, at the net's nominal values and at N random load/PV
scalings (each load's ``scaling`` and each sgen's ``scaling`` multiplied by a seeded factor in
the original net; the feeder's injections for the same sample come from
``injection_from_pandapower``). Per feeder it reports: converted or rejected (with the
message), bus counts, the largest voltage-magnitude difference over every bus pandapower solved
(fused buses share one voltage; buses the conversion dropped must be NaN in pandapower), the
largest difference in total losses (``res_line.pl_mw + res_trafo.pl_mw``), and the times.
The acceptance bound is 1e-6 pu and 1e-6 MW.

Results go to ``fidelity.json`` and ``fidelity.md`` in the output folder, written atomically
(temporary file, then ``os.replace``) after every feeder, so an interrupted run keeps what it
measured (``"complete": false``) and ``--resume`` continues from it.

Usage::

    python benchmarks/fidelity.py                  # every feeder, nominal + 20 scalings (~10 minutes)
    python benchmarks/fidelity.py --quick          # the CI subset, nominal + 3 scalings
    python benchmarks/fidelity.py --cases case33bw 1-MV-rural--0-sw
    python benchmarks/fidelity.py --resume         # keep the feeders already measured with the same settings

The certification column: on every converted feeder with inverters, random over- and
under-voltage snapshots are projected with ``certify_ac=True`` and every certified answer is
written into the original net and judged by ``runpp`` (:func:`certification_check`): the counts
of certified, corrected and refused answers, and of certified answers pandapower rejects (must
be 0).

The script exits 0 when every converted feeder meets the bound and 1 otherwise (130 when
interrupted).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
import warnings
from datetime import datetime, timezone
from pathlib import Path

from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _harness  # noqa: E402

STEM = "fidelity"
VERSION_OF = ("safedispatch", "numpy", "numba", "pandapower", "pandas", "simbench")

#: acceptance bounds: voltage magnitude (pu) and total losses (MW)
TOL_VM_PU = 1e-6
TOL_LOSS_MW = 1e-6
#: random scalings per feeder (full, quick), besides the nominal sample
N_SCALINGS = (20, 3)
#: per sample: every load's scaling times alpha * U(0.8, 1.2), every sgen's times beta * U(0.8, 1.2)
LOAD_ALPHA = (0.2, 1.3)
SGEN_BETA = (0.0, 1.0)
JITTER = (0.8, 1.2)
#: pandapower's reference: tight tolerance so it is precise to far below the bound
RUNPP = dict(tolerance_mva=1e-10, calculate_voltage_angles=True, max_iteration=100)
#: our sweep's tolerance (pu of voltage change per sweep)
OUR_TOL_PU = 1e-12

#: certification snapshots per converted feeder with inverters (full, quick): half over-voltage
#: (light load, strong sun, a greedy raw action), half under-voltage (heavy load, little sun)
N_CERT = (10, 4)
#: pandapower's verdict on a certified result: no bus outside its limits by more than this (pu),
#: no branch above 100 % by more than this (percent)
CERT_TOL_VM_PU = 1e-6
CERT_TOL_LOADING_PCT = 1e-4


def _uncontrolled(net, rep):
    """``(load_p_mw, load_q_mvar)`` of a Snapshot: the net's present injections with the PV
    inverters and storage units (the controlled devices) at zero, as consumption."""
    import copy

    from safedispatch.network.io import injection_from_pandapower

    net0 = copy.deepcopy(net)
    for table, i in rep.sources["pv"] + rep.sources["ess"]:
        net0[table].at[i, "scaling"] = 0.0
    p0, q0, _sh = injection_from_pandapower(net0, rep)
    return -p0, -q0


def pandapower_verdict(net, feeder, rep, action) -> tuple[float, float]:
    """Write ``action`` into a copy of the original ``net`` and solve it with ``runpp``.

    Returns:
        ``(v_violation_pu, loading_excess_pct)``: the largest excursion of a feeder bus outside
        its limits and the largest branch loading above 100 % (lines and transformers), as
        pandapower sees them (``inf`` when runpp does not converge).
    """
    import copy

    import numpy as np
    import pandapower as pp

    from safedispatch.network.io import write_setpoints_to_pandapower

    net2 = copy.deepcopy(net)
    write_setpoints_to_pandapower(net2, rep, action.pv_p_mw, action.pv_q_mvar, action.ess_p_mw, action.cap_step)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pp.runpp(net2, **RUNPP)
    except pp.LoadflowNotConverged:
        return math.inf, math.inf
    pp_idx = np.array(list(rep.bus_map), dtype=np.int64)
    ours = np.array(list(rep.bus_map.values()), dtype=np.int64)
    keep = ours != feeder.root_bus
    vm = net2.res_bus.vm_pu.loc[pp_idx].to_numpy()[keep]
    vv = max(float(np.max(vm - feeder.bus.vm_max_pu[ours[keep]], initial=0.0)),
             float(np.max(feeder.bus.vm_min_pu[ours[keep]] - vm, initial=0.0)))
    load = 0.0
    for table in ("line", "trafo"):
        res = net2[f"res_{table}"]
        if len(res) and "loading_percent" in res:
            load = max(load, float(np.nanmax(res.loading_percent.to_numpy(), initial=0.0)))
    return vv, max(load - 100.0, 0.0)


def certification_check(net, feeder, rep, n: int | None = None, seed: int = 0) -> dict:
    """Project random over- and under-voltage snapshots with ``certify_ac=True`` and judge every
    certified answer in ``pandapower.runpp`` on the **original** net (its set-points written into
    the rows they came from, :func:`~safedispatch.network.io.write_setpoints_to_pandapower`).

    Returns:
        A JSON-ready dict: ``n`` snapshots, ``certified`` (of which ``corrected``: the first AC
        check failed and the model was corrected), ``refused`` (not certified: the layer says
        so), ``errors`` (typed errors raised), ``certified_but_violating`` (pandapower found a
        violation beyond the tolerance in a certified answer: must be 0), the worst voltage
        excursion and loading excess pandapower saw in a certified answer, ``max_time_s`` and a
        one-line ``summary``; or ``{"summary": "no inverters"}``.
    """
    import zlib

    import numpy as np

    import safedispatch as sd

    if feeder.n_pv == 0:
        return {"summary": "no inverters", "n": 0}
    n = N_CERT[0] if n is None else n
    rng = np.random.default_rng(seed + zlib.crc32(feeder.name.encode()))
    layer = sd.SafetyLayer(feeder)
    load0 = net.load.scaling.copy()
    out = {"n": n, "certified": 0, "corrected": 0, "refused": 0, "errors": 0, "certified_but_violating": 0,
           "max_v_violation_pu": 0.0, "max_loading_excess_pct": 0.0, "max_time_s": 0.0, "statuses": {}}
    try:
        for k in range(n):
            over = k % 2 == 0
            net.load["scaling"] = load0 * (rng.uniform(0.05, 0.4) if over else rng.uniform(1.0, 2.0))
            lp, lq = _uncontrolled(net, rep)
            avail = feeder.pv.p_max_mw * (rng.uniform(0.7, 1.0, feeder.n_pv) if over
                                          else rng.uniform(0.0, 0.3, feeder.n_pv))
            snap = sd.Snapshot(load_p_mw=lp, load_q_mvar=lq, pv_avail_mw=avail)
            q = feeder.pv.s_mva * rng.uniform(-0.2, 0.2, feeder.n_pv) if over else np.zeros(feeder.n_pv)
            raw = sd.Action(pv_p_mw=avail, pv_q_mvar=q)
            t0 = time.perf_counter()
            try:
                res = layer.project(raw, snap, certify_ac=True)
            except sd.SafeDispatchError:
                out["errors"] += 1
                continue
            finally:
                out["max_time_s"] = max(out["max_time_s"], time.perf_counter() - t0)
            out["statuses"][res.status.name] = out["statuses"].get(res.status.name, 0) + 1
            if not res.certified:
                out["refused"] += 1
                continue
            out["certified"] += 1
            out["corrected"] += int(res.rounds > 0)
            vv, lx = pandapower_verdict(net, feeder, rep, res.action)
            out["max_v_violation_pu"] = max(out["max_v_violation_pu"], vv)
            out["max_loading_excess_pct"] = max(out["max_loading_excess_pct"], lx)
            out["certified_but_violating"] += int(vv > CERT_TOL_VM_PU or lx > CERT_TOL_LOADING_PCT)
    finally:
        net.load["scaling"] = load0
    out["summary"] = (f"{out['certified']}/{n} certified ({out['corrected']} corrected), {out['refused']} refused, "
                      f"{out['certified_but_violating']} rejected by pandapower; worst dV "
                      f"{out['max_v_violation_pu']:.0e} pu; max {out['max_time_s']:.2f} s")
    return out


#: the certification column: ``(net, feeder, report) -> dict`` stored as ``row["certification"]``
#: of every converted feeder (see ``check_feeder``)
CERTIFICATION_HOOK = certification_check


# ----------------------------------------------------------------------------- the feeders


def _pn(fn_name, *args, **kwargs):
    def build():
        import pandapower.networks as pn

        return getattr(pn, fn_name)(*args, **kwargs)

    return build


def _pick(fn_name, index, **kwargs):
    """One net of a pandapower function that returns several (``separation_by_sub=True``)."""
    def build():
        import pandapower.networks as pn

        return getattr(pn, fn_name)(**kwargs)[index]

    return build


def _sb(code):
    def build():
        import simbench

        return simbench.get_simbench_net(code)

    return build


def _simbench_codes() -> list[str]:
    try:
        import simbench
    except ImportError:
        return []
    codes = simbench.collect_all_simbench_codes()
    lv_mv = [c for c in codes if c.split("-")[1] in ("LV", "MV")]
    # one of each wider family, to show how meshed / multi-level nets are rejected (or not)
    extra = ["1-HV-mixed--0-sw", "1-HV-urban--0-sw", "1-EHV-mixed--0-sw", "1-MVLV-rural-1.108-0-sw",
             "1-HVMV-mixed-1.105-0-sw"]
    return lv_mv + [c for c in extra if c in codes]


#: the combinations create_dickert_lv_network accepts (feeders_range, linetype, customer, case)
DICKERT = [("short", "cable", "single", c) for c in ("good", "average", "bad")] + [
    (r, line, "multiple", c) for r, line in (("short", "cable"), ("middle", "cable"), ("middle", "C&OHL"),
                                             ("long", "cable"), ("long", "C&OHL"))
    for c in ("good", "average", "bad")]


def catalogue() -> dict:
    """``{feeder name: (source, builder)}`` of every feeder the benchmark checks: pandapower's
    distribution test networks (and two transmission cases, to show the rejection) and
    SimBench's LV and MV codes (plus one code of each wider family)."""
    out = {
        # MATPOWER distribution case shipped by pandapower (there is no case69 / case85 / case141)
        "case33bw": ("pandapower", _pn("case33bw")),
        # transmission MATPOWER cases: meshed, with voltage-controlled generators: rejected
        "case9": ("pandapower", _pn("case9")),
        "case11_iwamoto": ("pandapower", _pn("case11_iwamoto")),
        "cigre_mv": ("pandapower", _pn("create_cigre_network_mv")),
        "cigre_mv_pv_wind": ("pandapower", _pn("create_cigre_network_mv", with_der="pv_wind")),
        "cigre_mv_all_der": ("pandapower", _pn("create_cigre_network_mv", with_der="all")),
        "cigre_lv": ("pandapower", _pn("create_cigre_network_lv")),
        "mv_oberrhein": ("pandapower", _pn("mv_oberrhein")),
        "mv_oberrhein_sub0": ("pandapower", _pick("mv_oberrhein", 0, separation_by_sub=True)),
        "mv_oberrhein_sub1": ("pandapower", _pick("mv_oberrhein", 1, separation_by_sub=True)),
        "simple_mv_open_ring_net": ("pandapower", _pn("simple_mv_open_ring_net")),
        "simple_four_bus_system": ("pandapower", _pn("simple_four_bus_system")),
        "panda_four_load_branch": ("pandapower", _pn("panda_four_load_branch")),
        "four_loads_with_branches_out": ("pandapower", _pn("four_loads_with_branches_out")),
        "example_simple": ("pandapower", _pn("example_simple")),
        "example_multivoltage": ("pandapower", _pn("example_multivoltage")),
        "ieee_european_lv_asymmetric": ("pandapower", _pn("ieee_european_lv_asymmetric")),
        "lv_schutterwald": ("pandapower", _pn("lv_schutterwald")),
    }
    for fn in ("create_kerber_landnetz_freileitung_1", "create_kerber_landnetz_freileitung_2",
               "create_kerber_landnetz_kabel_1", "create_kerber_landnetz_kabel_2", "create_kerber_dorfnetz",
               "create_kerber_vorstadtnetz_kabel_1", "create_kerber_vorstadtnetz_kabel_2",
               "kb_extrem_landnetz_freileitung", "kb_extrem_landnetz_kabel", "kb_extrem_landnetz_freileitung_trafo",
               "kb_extrem_landnetz_kabel_trafo", "kb_extrem_dorfnetz", "kb_extrem_dorfnetz_trafo",
               "kb_extrem_vorstadtnetz_1", "kb_extrem_vorstadtnetz_2", "kb_extrem_vorstadtnetz_trafo_1",
               "kb_extrem_vorstadtnetz_trafo_2"):
        out[fn.removeprefix("create_")] = ("pandapower", _pn(fn))
    for rng_, line, cust, case in DICKERT:
        out[f"dickert_{rng_}_{line.replace('&', '')}_{cust}_{case}"] = (
            "pandapower", _pn("create_dickert_lv_network", feeders_range=rng_, linetype=line, customer=cust,
                              case=case))
    for cls in ("rural_1", "rural_2", "village_1", "village_2", "suburb_1"):
        out[f"synthetic_voltage_control_{cls}"] = (
            "pandapower", _pn("create_synthetic_voltage_control_lv_network", network_class=cls))
    for code in _simbench_codes():
        out[code] = ("simbench", _sb(code))
    return out


#: the subset ``--quick`` (and the default CI test run) uses
QUICK = ("case33bw", "cigre_mv_pv_wind", "cigre_lv", "simple_mv_open_ring_net", "four_loads_with_branches_out",
         "kerber_landnetz_kabel_1", "dickert_short_cable_single_good", "synthetic_voltage_control_rural_1",
         "example_simple", "ieee_european_lv_asymmetric", "1-MV-rural--0-sw", "1-LV-rural1--0-sw")


# ----------------------------------------------------------------------------- one feeder


def random_scalings(net, n: int, seed: int):
    """``n`` seeded samples of per-element factors: ``(load_factors, sgen_factors)``, lists of
    dicts ``{index: factor}`` (sample 0 of the caller is the nominal net, not among these)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    loads, sgens = [], []
    for _ in range(n):
        a = rng.uniform(*LOAD_ALPHA)
        b = rng.uniform(*SGEN_BETA)
        loads.append(dict(zip(net.load.index, a * rng.uniform(*JITTER, len(net.load)))))
        sgens.append(dict(zip(net.sgen.index, b * rng.uniform(*JITTER, len(net.sgen)))))
    return loads, sgens


def _pp_losses(net) -> float:
    import numpy as np

    total = float(np.nansum(net.res_line.pl_mw.to_numpy())) if len(net.line) else 0.0
    if len(net.trafo):
        total += float(np.nansum(net.res_trafo.pl_mw.to_numpy()))
    return total


def check_feeder(name: str, n_scalings: int, seed: int, build=None, n_cert: int | None = None) -> dict:
    """Convert one feeder and compare it with pandapower at nominal and ``n_scalings`` scalings.

    Args:
        name: A key of :func:`catalogue`.
        n_scalings: Random scalings besides the nominal sample.
        seed: Seed of the scalings (combined with the feeder's name, so each feeder has its own).
        build: The net's builder (default: the catalogue's).
        n_cert: Certification snapshots (default ``N_CERT[0]``; 0: no certification column).

    Returns:
        A JSON-ready dict: ``feeder``, ``source``, ``status`` ("converted", "rejected" or
        "error"), ``message`` (the rejection or error), ``n_bus_pp``, ``n_bus``, ``n_dropped``,
        ``n_fused``, ``n_half_connected``, ``n_pv``, ``n_fixed_gen``, ``samples``,
        ``pp_not_converged``, ``ours_not_converged``, ``dropped_not_nan``, ``max_dvm_pu``,
        ``max_dloss_mw``, ``loss_mw_nominal``, ``passed``, ``time_s`` (``build``, ``convert``,
        ``ours``, ``pandapower``) and ``certification`` (from :data:`CERTIFICATION_HOOK`).
    """
    import zlib

    import numpy as np
    import pandapower as pp

    import safedispatch as sd
    from safedispatch.network.io import injection_from_pandapower

    source, default_build = catalogue()[name] if build is None else ("custom", build)
    row = {"feeder": name, "source": source, "status": None, "message": None, "certification": None,
           "time_s": {}}
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pandapower / simbench deprecation chatter
        net = (build or default_build)()
    row["time_s"]["build"] = time.perf_counter() - t0
    row["n_bus_pp"] = int(len(net.bus))
    t0 = time.perf_counter()
    try:
        feeder, rep = sd.from_pandapower(net, report=True)
    except sd.NetworkDataError as exc:
        row["time_s"]["convert"] = time.perf_counter() - t0
        row.update(status="rejected", message=str(exc), field=exc.field, passed=True)
        return row
    row["time_s"]["convert"] = time.perf_counter() - t0
    row.update(status="converted", n_bus=feeder.n_bus, n_dropped=len(rep.dropped_buses), n_fused=len(rep.fused_buses),
               n_half_connected=len(rep.half_connected), n_pv=feeder.n_pv, n_fixed_gen=len(feeder.gen))

    loads, sgens = random_scalings(net, n_scalings, seed + zlib.crc32(name.encode()))
    load0, sgen0 = net.load.scaling.copy(), net.sgen.scaling.copy()
    P, Q, SH, vm_pp, loss_pp, ok = [], [], [], [], [], []
    t_pp = 0.0
    for k in range(n_scalings + 1):
        if k:
            net.load["scaling"] = load0 * net.load.index.map(loads[k - 1]).to_numpy(dtype=float)
            net.sgen["scaling"] = sgen0 * net.sgen.index.map(sgens[k - 1]).to_numpy(dtype=float)
        p, q, sh = injection_from_pandapower(net, rep)
        P.append(p)
        Q.append(q)
        SH.append(sh)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pp.runpp(net, **RUNPP)
            ok.append(True)
            vm_pp.append(net.res_bus.vm_pu.copy())
            loss_pp.append(_pp_losses(net))
        except pp.LoadflowNotConverged:
            ok.append(False)
            vm_pp.append(None)
            loss_pp.append(math.nan)
        t_pp += time.perf_counter() - t0
    row["time_s"]["pandapower"] = t_pp
    t0 = time.perf_counter()
    r = sd.run_powerflow(feeder, np.array(P), np.array(Q), shunt_q_mvar=np.array(SH), tol_pu=OUR_TOL_PU)
    row["time_s"]["ours"] = time.perf_counter() - t0
    pp_idx = np.array(list(rep.bus_map), dtype=np.int64)
    ours_idx = np.array(list(rep.bus_map.values()), dtype=np.int64)
    dropped = list(rep.dropped_buses)
    dvm, dloss, not_nan = 0.0, 0.0, 0
    for k in range(n_scalings + 1):
        if not ok[k] or not r.converged[k]:
            continue
        vm = vm_pp[k]
        theirs = vm.loc[pp_idx].to_numpy()
        dvm = max(dvm, float(np.nanmax(np.abs(theirs - r.vm_pu[k, ours_idx]))))
        if np.isnan(theirs).any():  # a bus we keep that pandapower did not solve
            dvm = math.inf
        not_nan += int(np.count_nonzero(np.isfinite(vm.loc[dropped].to_numpy()))) if dropped else 0
        ours = float(r.p_loss_mw[k] + rep.branch_shunt_p_mw @ r.vm_pu[k] ** 2)
        dloss = max(dloss, abs(ours - loss_pp[k]))
    net.load["scaling"], net.sgen["scaling"] = load0, sgen0
    row.update(samples=n_scalings + 1, pp_not_converged=int(ok.count(False)),
               ours_not_converged=int(np.count_nonzero(~r.converged)), dropped_not_nan=not_nan, max_dvm_pu=dvm,
               max_dloss_mw=dloss, loss_mw_nominal=loss_pp[0])
    both = sum(1 for k in range(n_scalings + 1) if ok[k] and r.converged[k])
    row["passed"] = bool(both > 0 and dvm <= TOL_VM_PU and dloss <= TOL_LOSS_MW and not_nan == 0
                         and row["ours_not_converged"] <= row["pp_not_converged"])
    if CERTIFICATION_HOOK is not None and n_cert != 0:
        row["certification"] = cert = CERTIFICATION_HOOK(net, feeder, rep, n=n_cert, seed=seed)
        row["passed"] = row["passed"] and not cert.get("certified_but_violating", 0)
    return row


# ----------------------------------------------------------------------------- report


def _short(msg: str | None, n: int = 140) -> str:
    if not msg:
        return ""
    msg = msg.replace("|", "/").replace("\n", " ")
    return msg if len(msg) <= n else msg[: n - 3] + "..."


def _cells(row: dict, width: int = 140) -> list[str]:
    t = row.get("time_s", {})
    total = sum(t.values())
    cert = row.get("certification")
    cert = "-" if cert is None else (cert.get("summary", json.dumps(cert)) if isinstance(cert, dict) else str(cert))
    if row["status"] == "converted":
        return [row["feeder"], row["source"], "converted" + ("" if row["passed"] else " **FAIL**"),
                f"{row['n_bus_pp']} -> {row['n_bus']}", f"{row['max_dvm_pu']:.1e}", f"{row['max_dloss_mw']:.1e}",
                f"{row['samples'] - row['pp_not_converged']}/{row['samples']}", f"{total:.1f}", cert,
                _short(f"{row['n_dropped']} dropped, {row['n_fused']} fused groups, {row['n_half_connected']} "
                       f"half-connected, {row['n_pv']} PV / {row['n_fixed_gen']} fixed gen", width)]
    return [row["feeder"], row["source"], row["status"], str(row.get("n_bus_pp", "-")), "-", "-", "-",
            f"{total:.1f}", cert, _short(row.get("message"), width)]


HEAD = ["feeder", "source", "outcome", "buses (pp -> ours)", "max abs dV (pu)", "max loss diff (MW)",
        "samples solved", "time (s)", "certification", "notes / rejection"]


def _markdown(report: dict) -> str:
    rows = report["rows"]
    conv = [r for r in rows if r["status"] == "converted"]
    md = _harness.md_intro(report, "Fidelity: `sd.from_pandapower` + `sd.run_powerflow` vs pandapower `runpp` "
                           "on the original nets")
    md += [
        f"Each converted feeder: nominal plus {report['settings']['n_scalings']} seeded random scalings of every "
        "load's and sgen's `scaling` (load x alpha x U(0.8, 1.2), alpha in "
        f"{list(LOAD_ALPHA)}; sgen x beta x U(0.8, 1.2), beta in {list(SGEN_BETA)}), pandapower `runpp` "
        f"(`tolerance_mva` {RUNPP['tolerance_mva']:g}) on the original net against `sd.run_powerflow` on the "
        "converted feeder with `injection_from_pandapower`. dV: every bus pandapower solved (fused buses share a "
        "voltage); loss: `res_line.pl_mw + res_trafo.pl_mw` against `p_loss_mw` plus the half-connected "
        f"branches' shunt losses. Bound: {TOL_VM_PU:g} pu, {TOL_LOSS_MW:g} MW.", "",
        f"**{len(conv)} converted ({sum(r['passed'] for r in conv)} within the bound), "
        f"{sum(r['status'] == 'rejected' for r in rows)} rejected, {sum(r['status'] == 'error' for r in rows)} "
        f"errors, of {len(rows)} feeders.**"
        + ("" if report["complete"] else " (incomplete run: interrupted or still running)"), "",
        _harness.md_table(HEAD, [_cells(r) for r in rows]), "",
        f"Certification: {report['settings'].get('n_cert', N_CERT[0])} snapshots per feeder with inverters "
        "(alternately light load with strong sun and a greedy raw action, and heavy load with little sun), "
        "projected with `certify_ac=True`; each certified answer is written into the original net and solved "
        f"by `runpp`: it must have no bus outside its limits by more than {CERT_TOL_VM_PU:g} pu and no line or "
        f"transformer above 100 % by more than {CERT_TOL_LOADING_PCT:g} %.", "",
    ]
    md += _harness.md_notes(report)
    return "\n".join(md)


def _write(out: Path, report: dict) -> None:
    _harness.write_atomic(out / f"{STEM}.json", json.dumps(report, indent=2, default=float) + "\n")
    _harness.write_atomic(out / f"{STEM}.md", _markdown(report))


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"the CI subset ({len(QUICK)} feeders), nominal + "
                    f"{N_SCALINGS[1]} scalings")
    ap.add_argument("--cases", nargs="+", metavar="FEEDER", help="feeders to check (default: all; see catalogue())")
    ap.add_argument("--scalings", type=int, default=None, help="random scalings per feeder (default: "
                    f"{N_SCALINGS[0]}, {N_SCALINGS[1]} with --quick)")
    ap.add_argument("--cert", type=int, default=None, help="certification snapshots per feeder with inverters "
                    f"(default: {N_CERT[0]}, {N_CERT[1]} with --quick; 0: none)")
    ap.add_argument("--out", type=Path, default=_harness.RESULTS_DIR, help="folder for fidelity.json / .md")
    ap.add_argument("--seed", type=int, default=0, help="seed of the scalings (default: 0)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an existing fidelity.json measured with the same settings")
    args = ap.parse_args(argv)
    if args.scalings is not None and args.scalings < 0:
        ap.error("--scalings: expected >= 0")
    return args


def main(argv=None) -> int:
    """Run the benchmark; returns the exit status."""
    args = _parse(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    t_start = time.perf_counter()
    cat = catalogue()
    names = list(args.cases) if args.cases else (list(QUICK) if args.quick else list(cat))
    unknown = [n for n in names if n not in cat]
    if unknown:
        console.print(f"[red]unknown feeders {unknown}; known: {', '.join(cat)}[/red]")
        return 2
    n_scal = args.scalings if args.scalings is not None else N_SCALINGS[int(args.quick)]
    n_cert = args.cert if args.cert is not None else N_CERT[int(args.quick)]
    settings = {"mode": "quick" if args.quick else "full", "n_scalings": n_scal, "n_cert": n_cert, "seed": args.seed,
                "feeders": names, "tol_vm_pu": TOL_VM_PU, "tol_loss_mw": TOL_LOSS_MW, "runpp": RUNPP,
                "load_alpha": LOAD_ALPHA, "sgen_beta": SGEN_BETA, "jitter": JITTER}
    machine = _harness.machine_info(VERSION_OF)
    done: dict = {}
    if args.resume and (args.out / f"{STEM}.json").exists():
        old = json.loads((args.out / f"{STEM}.json").read_text())
        keys = ("n_scalings", "n_cert", "seed")
        same = ({k: old.get("settings", {}).get(k) for k in keys} == {"n_scalings": n_scal, "n_cert": n_cert,
                                                                       "seed": args.seed}
                and old.get("machine", {}).get("versions") == machine["versions"])
        if same:
            done = {r["feeder"]: r for r in old.get("rows", []) if r["feeder"] in names}
            console.print(f"resuming: {len(done)} feeders kept from {args.out / f'{STEM}.json'}")
        else:
            console.print("[yellow]--resume: the existing results used other settings or versions; starting over"
                          "[/yellow]")
    report = {"benchmark": STEM, "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "wall_s": 0.0,
              "machine": machine, "settings": settings, "complete": False, "notes": [], "runs": [], "rows": []}
    cpu0 = _harness.cpu_snapshot()
    try:
        for i, name in enumerate(names):
            if name in done:
                row = done[name]
            else:
                with console.status(f"[{i + 1}/{len(names)}] {name}"):
                    try:
                        row = check_feeder(name, n_scal, args.seed, n_cert=n_cert)
                    except Exception as exc:  # a benchmark reports a crash as a row and goes on
                        row = {"feeder": name, "source": cat[name][0], "status": "error", "passed": False,
                               "message": f"{type(exc).__name__}: {exc}", "certification": None, "time_s": {},
                               "traceback": traceback.format_exc(limit=5)}
            report["rows"].append(row)
            colour = "green" if row.get("passed") else "red"
            extra = (f"dV {row['max_dvm_pu']:.1e} pu, dloss {row['max_dloss_mw']:.1e} MW"
                     if row["status"] == "converted" else _short(row.get("message"), 110))
            console.log(f"[{colour}]{name}: {row['status']}[/{colour}] {extra}")
            report["wall_s"] = time.perf_counter() - t_start
            _write(args.out, report)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; the results so far are in the output folder (complete: false)[/yellow]")
        return 130
    report["complete"] = True
    foreign = _harness.foreign_cpu(cpu0, _harness.cpu_snapshot())
    if foreign is not None and foreign >= _harness.FOREIGN_CPU_NOTE:
        report["notes"].append(f"other processes used {foreign:.0%} of the machine's CPU time during the run: the "
                               "times are disturbed (the accuracy figures are not)")
    report["notes"] += [f"{r['feeder']}: pandapower did not converge on {r['pp_not_converged']} of {r['samples']} "
                        "samples (left out)" for r in report["rows"] if r.get("pp_not_converged")]
    report["wall_s"] = time.perf_counter() - t_start
    _write(args.out, report)
    _harness.print_table(console, "Fidelity vs pandapower runpp", HEAD, [_cells(r, 60) for r in report["rows"]])
    failed = [r["feeder"] for r in report["rows"] if not r.get("passed")]
    console.print(f"wrote {args.out / f'{STEM}.json'} and {args.out / f'{STEM}.md'} ({report['wall_s']:.0f} s); "
                  + (f"[red]{len(failed)} failed: {failed}[/red]" if failed else "[green]all within the bound[/green]"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
