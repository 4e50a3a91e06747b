"""The safety layer: ``SafetyLayer`` (set up once, project many) and ``project_action``."""

from safedispatch.safety.layer import ProjectionResult, ProjectionStatus, SafetyLayer, project_action

__all__ = ["ProjectionResult", "ProjectionStatus", "SafetyLayer", "project_action"]
