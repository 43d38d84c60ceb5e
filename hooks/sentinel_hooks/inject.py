"""Arming the hooks in a process started by ``sentinel run`` (or a framework plugin entry point).

Arming is cheap: the ring is created lazily by the first hook call, so helper processes that
never step leave no ring behind. Set ``SENTINEL_EAGER=1`` to create it at start-up instead.
"""

from __future__ import annotations

import os

from . import runtime

armed = False


def arm() -> None:
    """Idempotent. Never raises."""
    global armed
    if armed:
        return
    armed = True
    try:
        if os.environ.get("SENTINEL_EAGER", "") not in ("", "0"):
            runtime.start()
    except Exception as exc:
        runtime.failed("arm", exc)
