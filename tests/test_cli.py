"""The command line: demo, cases, powerflow, and typed errors as exit status 2."""

from __future__ import annotations

from safedispatch import cli


def test_demo_runs_and_crosschecks_pandapower(capsys):
    assert cli.main(["demo", "--case", "ieee33-paperB-4"]) == 0
    out = capsys.readouterr().out
    assert "pandapower runpp" in out and "flows/s" in out
    dv = float(out.split("max |dV| = ")[1].split()[0])
    assert dv < 1e-6
    assert "certified=True" in out


def test_cases_lists_every_case(capsys):
    assert cli.main(["cases"]) == 0
    out = capsys.readouterr().out
    assert "ieee33-paperC" in out and "ieee33x30" in out


def test_powerflow_reports_baran_wu(capsys):
    assert cli.main(["powerflow", "--case", "ieee33"]) == 0
    out = capsys.readouterr().out
    assert "202.68" in out and "0.91309" in out


def test_unknown_case_is_a_clean_error(capsys):
    assert cli.main(["powerflow", "--case", "nope"]) == 2
    assert "unknown case" in capsys.readouterr().err
