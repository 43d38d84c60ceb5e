"""Arming the hooks in a process started by ``sentinel run`` (or a framework plugin entry point).

Arming is cheap: the ring is created lazily by the first hook call, so helper processes that
never step leave no ring behind. Set ``SENTINEL_EAGER=1`` to create it at start-up instead.
"""

from __future__ import annotations

from . import crash, env, importhook, runtime

__all__ = ["arm"]

armed = False


def arm() -> None:
    """Idempotent. Never raises."""
    global armed
    if armed:
        return
    armed = True
    try:
        crash.setup_coredumps()  # before CUDA initialises: it reads these once
        if crash.setup_faulthandler():
            runtime.at_step_milestones(crash.rearm_faulthandler)
        crash.setup_excepthook()
        if runtime.setting(env.EAGER):
            runtime.start()
        if runtime.setting(env.COLLECTIVES):
            # Hook torch.distributed once torch as a whole has finished importing.
            importhook.when_imported("torch", lambda _m: importhook.when_imported("torch.distributed", _trace))
    except Exception as exc:
        runtime.failed("arm", exc)
    try:
        # Framework adapters (vLLM, SGLang): post-import hooks only; they never import a framework.
        from . import adapters

        adapters.arm()
    except Exception as exc:
        runtime.failed("arm adapters", exc)


def _trace(_module: object) -> None:
    from . import collectives

    collectives.install()
