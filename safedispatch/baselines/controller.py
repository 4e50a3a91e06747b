"""One controller interface for every method: baselines and trained policies alike.

Evaluation code calls ``controller.act(snapshot) -> Action`` and nothing else, so a trained
policy, an optimization baseline and a local droop law are compared by the same code. A
controller may keep state between calls (previous set-points, warm starts); ``reset()``
clears it at the start of an episode.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from safedispatch.network.feeder import Feeder
from safedispatch.problems.types import Action, Snapshot, check_feeder, check_snapshot

__all__ = ["Controller", "NoControl", "available_p_mw", "hold_cap_step"]


def available_p_mw(feeder: Feeder, snap: Snapshot) -> np.ndarray:
    """``(n_pv,)`` the most active power each inverter can inject: ``min(available, s_mva)``
    (MW)."""
    return np.minimum(np.asarray(snap.pv_avail_mw, float), feeder.pv.s_mva)


def hold_cap_step(feeder: Feeder, snap: Snapshot) -> np.ndarray:
    """``(n_cap,)`` capacitor steps left where they were: the previous action's, else
    ``cap.step_init``."""
    if snap.prev is not None and snap.prev.cap_step is not None:
        return np.asarray(snap.prev.cap_step, dtype=np.int64).copy()
    return feeder.cap.step_init.copy()


class Controller(ABC):
    """A controller maps the snapshot of one time step to device set-points.

    Subclasses implement :meth:`act`; they validate the snapshot with
    :func:`~safedispatch.problems.types.check_snapshot` so bad input (a wrong type included)
    raises :class:`~safedispatch.errors.InputError` naming the field.

    Attributes:
        feeder: The network the controller acts on.
        name: Short name used in reports.
    """

    name = "controller"

    def __init__(self, feeder: Feeder):
        self.feeder = check_feeder(feeder)

    def reset(self) -> None:  # noqa: B027  (optional hook, deliberately not abstract)
        """Forget state kept between calls (start of an episode). Stateless controllers
        need not override it."""

    @abstractmethod
    def act(self, snapshot: Snapshot) -> Action:
        """Set-points for this snapshot.

        Args:
            snapshot: Loads, PV availability, previous set-points.

        Returns:
            An :class:`~safedispatch.Action` of the feeder's sizes.

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder.
        """

    def __call__(self, snapshot: Snapshot) -> Action:
        return self.act(snapshot)


class NoControl(Controller):
    """No control (paper C's first row): every inverter injects all available PV at unity
    power factor, capacitors stay at their steps, storage idles.

    This is what an uncontrolled PV fleet does (IEEE 1547-2018's default is constant unity
    power factor unless the utility specifies a mode).
    """

    name = "no_control"

    def act(self, snapshot: Snapshot) -> Action:
        """Available PV at unity power factor (see class docstring).

        Raises:
            InputError: the snapshot is not a Snapshot or does not fit the feeder.
        """
        f = self.feeder
        snap = check_snapshot(snapshot, f)
        return Action(pv_p_mw=available_p_mw(f, snap), pv_q_mvar=np.zeros(f.n_pv), cap_step=hold_cap_step(f, snap),
                      ess_p_mw=np.zeros(f.n_ess))
