"""The safety layer: ``SafetyLayer`` (set up once, project many) and ``project_action``."""

from safedispatch.safety.layer import ProjectionResult, ProjectionStatus, SafetyLayer, project_action
from safedispatch.safety.torch_layer import TorchSafetyLayer

__all__ = ["ProjectionResult", "ProjectionStatus", "SafetyLayer", "TorchSafetyLayer", "project_action"]
