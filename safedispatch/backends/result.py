"""One result type for every backend (linopy's habit, done right), and the capture of what
solvers print.

**Solver output.** Solvers print: SCS its "ERROR: could not determine problem status" through
Python's ``sys.stdout``, ECOS, OSQP, Clarabel and HiGHS from compiled code straight to the
process's file descriptors 1 and 2 (when asked to be verbose, or on some failures whatever the
settings). The backends call them inside :func:`captured_output`, and put what was printed into
``SolveResult.info["solver_output"]`` instead of the user's terminal.

Thread safety: ``sys.stdout`` and the file descriptors are process-wide. :func:`captured_output`
is reference-counted under a lock: the first thread to enter redirects, the last to leave
restores, so concurrent solves (ADMM's zone threads) are safe and nothing leaks to the
terminal while any capture is active; the price is that each capture's text may include what
other threads printed meanwhile, theirs or anyone's. Set :data:`CAPTURE_FD` to False to
capture only Python-level output (then compiled solvers' prints are not redirected at all).
Not for use across ``fork`` while a capture is active.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

__all__ = ["CAPTURE_FD", "SolveResult", "SolveStatus", "captured_output"]


class SolveStatus(IntEnum):
    """Outcome of one solve. Only OPTIMAL carries a trusted optimum; hitting a time or
    iteration limit without a certified point is never OPTIMAL."""

    OPTIMAL = 0
    OPTIMAL_INACCURATE = 1  # solver stopped at reduced accuracy; the caller checks feasibility
    INFEASIBLE = 2
    UNBOUNDED = 3
    LIMIT_REACHED = 4  # time or iteration limit
    NUMERICAL_ERROR = 5
    NOT_SOLVED = 6

    @property
    def has_solution(self) -> bool:
        return self in (SolveStatus.OPTIMAL, SolveStatus.OPTIMAL_INACCURATE)


@dataclass
class SolveResult:
    """What a backend returns.

    Attributes:
        status: The outcome.
        x: Variable values by name (numpy arrays; empty when there is no solution).
        objective: Objective value (nan-free: ``inf`` when there is none).
        solver: Name of the solver that produced the result (after any fallback).
        solve_time_s: Wall time of the solve call(s), seconds.
        iterations: Solver iterations (0 when unknown).
        info: Anything else (solvers tried, raw status strings, residuals, and
            ``"solver_output"``: the text the solvers printed, "" when silent).
    """

    status: SolveStatus
    x: dict = field(default_factory=dict)
    objective: float = float("inf")
    solver: str = ""
    solve_time_s: float = 0.0
    iterations: int = 0
    info: dict[str, Any] = field(default_factory=dict)


#: redirect file descriptors 1 and 2 too (compiled solvers' prints); False: ``sys.stdout`` and
#: ``sys.stderr`` only
CAPTURE_FD = True


class _Capture:
    """The process-wide redirection shared by all active :func:`captured_output` blocks."""

    lock = threading.Lock()
    depth = 0
    file = None  # binary temporary file receiving everything
    text = None  # a text stream on it (sys.stdout and sys.stderr while capturing)
    pid = None
    saved_fds: tuple = ()
    saved_streams: tuple = ()
    libc = None

    @classmethod
    def _flush_c(cls) -> None:
        # C stdio buffers a redirected stdout fully: flush it before reading or restoring
        try:
            if cls.libc is None:
                cls.libc = ctypes.CDLL(None)
            cls.libc.fflush(None)
        except Exception:  # noqa: BLE001  (no libc to flush, e.g. on some platforms)
            cls.libc = False

    @classmethod
    def _sink(cls):
        """The temporary file (and a text stream on it) receiving the output, kept open and
        emptied between captures (made anew in a forked child)."""
        if cls.file is None or cls.pid != os.getpid():
            f = tempfile.TemporaryFile()
            text = io.TextIOWrapper(open(f.fileno(), "wb", buffering=0, closefd=False), encoding="utf-8",
                                    errors="replace", write_through=True)
            cls.file, cls.text, cls.pid = f, text, os.getpid()
        return cls.file.fileno()

    @classmethod
    def enter(cls) -> int:
        with cls.lock:
            if cls.depth == 0:
                for s in (sys.stdout, sys.stderr):
                    with contextlib.suppress(Exception):
                        s.flush()
                fd = cls._sink()
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
                saved = ()
                if CAPTURE_FD and hasattr(os, "pread"):
                    try:
                        if cls.libc is not False:
                            cls._flush_c()
                        saved = (os.dup(1), os.dup(2))
                        os.dup2(fd, 1)
                        os.dup2(fd, 2)
                    except OSError:  # no descriptors 1 and 2 (e.g. a GUI process): Python level only
                        for d in saved:
                            os.close(d)
                        saved = ()
                cls.saved_fds = saved
                cls.saved_streams = (sys.stdout, sys.stderr)
                sys.stdout = sys.stderr = cls.text
            cls.depth += 1
            return os.lseek(cls.file.fileno(), 0, os.SEEK_END)

    @classmethod
    def leave(cls, start: int) -> str:
        with cls.lock:
            try:
                cls.text.flush()
                if cls.saved_fds and cls.libc is not False:
                    cls._flush_c()
                fd = cls.file.fileno()
                end = os.lseek(fd, 0, os.SEEK_END)
                if hasattr(os, "pread"):
                    data = os.pread(fd, max(end - start, 0), start)
                else:  # pragma: no cover - platforms without pread: no concurrent readers there
                    os.lseek(fd, start, os.SEEK_SET)
                    data = os.read(fd, max(end - start, 0))
                    os.lseek(fd, end, os.SEEK_SET)
            finally:
                cls.depth -= 1
                if cls.depth == 0:
                    out, err = cls.saved_streams
                    if sys.stdout is cls.text:
                        sys.stdout = out
                    if sys.stderr is cls.text:
                        sys.stderr = err
                    for target, d in zip((1, 2), cls.saved_fds):
                        os.dup2(d, target)
                        os.close(d)
                    cls.saved_fds, cls.saved_streams = (), ()
            return data.decode("utf-8", errors="replace")


class captured_output(contextlib.AbstractContextManager):  # noqa: N801  (used like a function)
    """Capture what is printed inside the block (``sys.stdout``/``sys.stderr`` and, with
    :data:`CAPTURE_FD`, file descriptors 1 and 2); ``.text`` holds it afterwards.

    Usage::

        with captured_output() as out:
            problem.solve(solver="SCS")
        result.info["solver_output"] = out.text

    Thread-safe and re-entrant (see the module docstring for what concurrent blocks share).
    """

    def __init__(self):
        self.text = ""
        self._start = None

    def __enter__(self):
        self._start = _Capture.enter()
        return self

    def __exit__(self, *exc):
        self.text = _Capture.leave(self._start)
        return False
