"""Driver names, as written in a configuration file, to driver objects.

Every YAML file in ``drivers/profiles/`` is a driver named after the file (``sysmex-xn.yaml``
-> ``sysmex-xn``), loaded the first time it is asked for. ``generic-astm`` is the default. A
lab's own profile file is loaded with `load_profile`.
"""

from __future__ import annotations

from pathlib import Path

from drivers.base import AstmDriver
from drivers.engine import ProfileDriver
from drivers.generic_astm import GenericAstmDriver
from drivers.profile import ProfileError, load_profile_file

__all__ = ["DEFAULT", "PROFILES", "ProfileError", "get", "load_profile", "names", "resolve"]

#: The driver an instrument gets when its configuration names none.
DEFAULT = GenericAstmDriver.name
#: The folder of the profiles shipped with labgate.
PROFILES = Path(__file__).resolve().parent / "profiles"

_loaded: dict[str, AstmDriver] = {}


def names() -> list[str]:
    """Every driver name a configuration may use."""
    return sorted(path.stem for path in PROFILES.glob("*.yaml"))


def get(name: str) -> AstmDriver:
    """The driver registered under `name` (config validation has already checked it exists).

    Raises KeyError for an unknown name and `ProfileError` for a shipped profile that does not
    validate."""
    driver = _loaded.get(name)
    if driver is None:
        if name not in names():
            raise KeyError(name)
        if name == DEFAULT:
            driver = GenericAstmDriver()
        else:
            driver = ProfileDriver(load_profile_file(PROFILES / f"{name}.yaml"))
        _loaded[name] = driver
    return driver


def load_profile(path: str | Path) -> ProfileDriver:
    """A driver from a lab's own profile file; ``extends: <name>`` finds shipped profiles.
    Raises `ProfileError` naming the file, line and field of what is wrong."""
    path = Path(path)
    profile = load_profile_file(path, search=PROFILES)
    return ProfileDriver(profile)


def is_profile_path(value: str) -> bool:
    """A configuration's `driver` may name a shipped driver or a lab's own profile file."""
    return value.endswith((".yaml", ".yml"))


def resolve(value: str) -> AstmDriver:
    """The driver a configuration's `driver` value means: a shipped name, or a profile file
    (read anew each time, so an edited file is seen at the next start or reload)."""
    return load_profile(value) if is_profile_path(value) else get(value)
