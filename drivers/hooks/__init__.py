"""Family hooks: the code an analyser family needs beyond its YAML profile, by name.

A profile names its hook (``hook: sysmex-xn``) and may pass options (``hook_options``), which
the hook's own pydantic model validates when the profile loads.
"""

from __future__ import annotations

from drivers.hooks.base import Hook, HookOptions, SpecimenDraft, TestCode, TestCodeReader
from drivers.hooks.mindray import MindrayBsHook
from drivers.hooks.ortho import OrthoVisionHook
from drivers.hooks.sysmex import SysmexXnHook

__all__ = ["HOOKS", "Hook", "HookOptions", "SpecimenDraft", "TestCode", "TestCodeReader"]

#: Hook name (as a profile writes it) -> hook class.
HOOKS: dict[str, type[Hook]] = {
    hook.name: hook for hook in (SysmexXnHook, MindrayBsHook, OrthoVisionHook)
}
