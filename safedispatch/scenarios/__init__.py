"""Load and PV time series that ship with the package, stochastic PV scenarios and scenario
reduction."""

from safedispatch.scenarios.irradiance import ARModel, fit_clear_sky_index, pv_scenarios
from safedispatch.scenarios.profiles import CaseProfiles, Profiles, case_profiles, load_profiles, split_days
from safedispatch.scenarios.reduction import ReducedScenarios, forward_selection

__all__ = ["ARModel", "CaseProfiles", "Profiles", "ReducedScenarios", "case_profiles", "fit_clear_sky_index",
           "forward_selection", "load_profiles", "pv_scenarios", "split_days"]
