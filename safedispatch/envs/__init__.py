"""Environments: one feeder day per episode, physics by the AC power flow (Gymnasium and
PettingZoo APIs), and the safety wrappers."""

from safedispatch.envs.dispatch import DispatchEnv, EnvConfig, ResetNeeded
from safedispatch.envs.multi_agent import MultiAgentDispatchEnv
from safedispatch.envs.safety import ParallelSafetyWrapper, SafetyWrapper
from safedispatch.envs.vector import VectorDispatchEnv

__all__ = ["DispatchEnv", "EnvConfig", "MultiAgentDispatchEnv", "ParallelSafetyWrapper", "ResetNeeded",
           "SafetyWrapper", "VectorDispatchEnv"]
