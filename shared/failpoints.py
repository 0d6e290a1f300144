"""Failpoints: named places where a fault test can make a process die or a step fail, on purpose.

Off unless a service is started with `BATON_<SERVICE>_FAILPOINTS`, e.g. `relay.after_publish=exit@3` (die like
SIGKILL on the third hit) or `consumer.before_effect=raise*3` (fail the first three hits). Used by tests/faults to
hit the narrow windows a random kill rarely finds: after publishing but before marking rows sent, after the
database commit but before the offset commit.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)

KILLED_EXIT_CODE = 137  # what a shell reports for SIGKILL


class FailpointError(RuntimeError):
    """The failure a `raise` failpoint injects."""


@dataclass
class _Failpoint:
    action: str
    count: int
    hits: int = 0


class Failpoints:
    """The failpoints of one process, parsed from a spec like `a=exit@2,b=raise*3`."""

    def __init__(self, spec: str = "") -> None:
        self._points = dict(_parse(item) for item in spec.split(",") if item.strip())

    def armed(self, name: str) -> bool:
        """True if a failpoint is set at `name`."""
        return name in self._points

    def hit(self, name: str) -> None:
        """Pass through the named place: exit the process or raise if a failpoint there says so."""
        point = self._points.get(name)
        if point is None:
            return
        point.hits += 1
        if point.action == "exit" and point.hits == point.count:
            log.error("failpoint %s: exiting as if killed", name)
            logging.shutdown()
            os._exit(KILLED_EXIT_CODE)
        if point.action == "raise" and point.hits <= point.count:
            raise FailpointError(f"failpoint {name} (hit {point.hits} of {point.count})")


def _parse(item: str) -> tuple[str, _Failpoint]:
    name, _, action = item.strip().partition("=")
    if action.startswith("exit@"):
        return name, _Failpoint("exit", int(action[5:]))
    if action.startswith("raise*"):
        return name, _Failpoint("raise", int(action[6:]))
    raise ValueError(f"bad failpoint {item!r}: use name=exit@N or name=raise*N")
