"""The processes a server started, so that none outlives it.

Ctrl-C in a terminal signals the whole process group: Ray's raylet may die first and orphan
its workers (Serve's controller, proxy and replicas, and vLLM's engine cores under them), which
Ray's own shutdown then cannot reach. ``Descendants`` remembers every process below this one
as they appear, and ``end`` stops those still running.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

log = logging.getLogger("steering.ray_serve")


class Descendants:
    """The processes this one started (Ray's GCS, raylet, workers and what they start), so
    that none outlives the server. Ctrl-C in a terminal signals the whole process group: a
    raylet that dies first orphans its workers, which Ray's own shutdown then cannot reach;
    ``end`` stops every one remembered that is still running."""

    def __init__(self) -> None:
        import psutil

        self._me = psutil.Process()
        self._seen: dict[int, Any] = {}
        self.remember()

    def remember(self) -> None:
        import psutil

        try:
            for child in self._me.children(recursive=True):
                self._seen.setdefault(child.pid, child)
        except psutil.Error:
            pass

    def end(self, wait_s: float = 10.0) -> list[int]:
        """Terminate (then kill) every remembered process still running; their pids."""
        import psutil

        alive = [p for p in self._seen.values() if _running(p)]
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, left = psutil.wait_procs(alive, timeout=wait_s)
        for p in left:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if alive:
            log.warning("stopped %d processes Ray left running", len(alive))
        return [p.pid for p in alive]


def _running(process: Any) -> bool:
    import psutil

    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False
