"""Waiting for a server the tests started: until it answers, its process dies, or time runs out.

Orthanc, Chromium and ``xiqa serve`` are real processes that take seconds to
come up on a loaded machine; a dead one must fail the test at once with its
log, not after the whole timeout.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence

import pytest


def wait_until(condition: Callable[[], object], seconds: float, what: str, *,
               processes: Sequence[subprocess.Popen] = (), log: Callable[[], str] = str,
               not_yet: tuple[type[BaseException], ...] = (), interval: float = 0.1) -> object:
    """``condition()``'s value once it is truthy; fail the test when one of ``processes`` exits first
    or ``seconds`` pass.  ``not_yet``: exceptions of ``condition`` that mean "not up yet"
    (a refused connection); ``log()`` is shown with the failure."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            value = condition()
            if value:
                return value
        except not_yet:
            pass
        for process in processes:
            if process.poll() is not None:
                pytest.fail(f"{what}: the process exited with {process.returncode}:\n{log()[-4000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds:g} s:\n{log()[-4000:]}")
        time.sleep(interval)
