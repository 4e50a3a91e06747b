"""Feeder data: buses, branches, devices, zones; pandapower conversion; built-in cases."""

from safedispatch.network.cases import list_cases, load_case
from safedispatch.network.feeder import (
                                         BranchTable,
                                         BusTable,
                                         CapTable,
                                         ESSTable,
                                         Feeder,
                                         GenTable,
                                         LoadTable,
                                         PVTable,
                                         RadialStructure,
)
from safedispatch.network.io import (
                                         ConversionReport,
                                         conversion_report,
                                         from_pandapower,
                                         injection_from_pandapower,
                                         to_pandapower,
)

__all__ = ["BranchTable", "BusTable", "CapTable", "ConversionReport", "ESSTable", "Feeder", "GenTable", "LoadTable",
           "PVTable", "RadialStructure", "conversion_report", "from_pandapower", "injection_from_pandapower",
           "list_cases", "load_case", "to_pandapower"]
