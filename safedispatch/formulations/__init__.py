"""Convex network models, one file each: LinDistFlow and the SOCP branch flow relaxation.

Each formulation exposes ``NAME``, ``CITATION`` and ``build(alg, tree, p_inj, q_inj, w_source)``;
the templates take plain numbers (:class:`~safedispatch.formulations.tree.TreeData`) and an
algebra, so CVXPY and Pyomo models come from the same equations.
"""

from safedispatch.formulations import lindistflow, socp_branchflow
from safedispatch.formulations.tree import TreeData

__all__ = ["TreeData", "lindistflow", "socp_branchflow"]
