"""The safety layer: ``SafetyLayer`` (set up once, project many) and ``project_action``;
``TorchSafetyLayer`` (batched, differentiable) is imported on first use (it needs torch)."""

from safedispatch.safety.layer import ProjectionResult, ProjectionStatus, SafetyLayer, project_action

__all__ = ["ProjectionResult", "ProjectionStatus", "SafetyLayer", "TorchSafetyLayer", "project_action"]


def __getattr__(name: str):
    if name == "TorchSafetyLayer":
        from safedispatch.safety.torch_layer import TorchSafetyLayer

        return TorchSafetyLayer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
