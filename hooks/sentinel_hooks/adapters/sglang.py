"""The SGLang adapter (placeholder until its hook points are written)."""

from __future__ import annotations

from types import ModuleType

from .. import runtime
from .base import Adapter, HookPoint


class SGLangAdapter(Adapter):
    name = "sglang"
    module = "sglang"
    distributions = ("sglang",)
    verified_versions = ("0.5.23",)

    def hook_points(self) -> list[HookPoint]:
        return [HookPoint("sglang", self._on_sglang)]

    def _on_sglang(self, module: ModuleType) -> None:
        self.framework_version = str(getattr(module, "__version__", "") or "")
        runtime.set_identity(framework="sglang", framework_version=self.framework_version[:31])


ADAPTER = SGLangAdapter()


def register() -> None:
    try:
        from .. import inject

        inject.arm()
        from . import arm

        arm(only=("sglang",), force=True)
    except Exception as exc:
        runtime.failed("sglang plugin register", exc)
