"""Load a YAML configuration file and refuse a bad one with file, line and field.

PyYAML's composer keeps the position of every node, so the loader builds plain Python values and,
beside them, a map from each value's path (("instruments", 0, "transport", "port")) to its line.
pydantic's error locations are such paths, which gives a technician "demo.yaml:14: instruments[0]
.transport.port: Input should be less than or equal to 65535" instead of a traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from middleware.config.settings import Settings, cross_check

__all__ = [
    "ConfigError",
    "ConfigProblem",
    "load_settings",
    "load_settings_text",
    "read_text_file",
    "validate_yaml",
]

Path_ = tuple[str | int, ...]
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One thing wrong in a configuration file."""

    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        return f"{where}: {self.field or '(file)'}: {self.message}"


class ConfigError(Exception):
    """A configuration file was refused; `problems` lists every reason found."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


def _field_name(path: Path_) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else part
    return text


def _build(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> Any:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        result: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = (
                yaml.safe_load(yaml.serialize(key_node))
                if not isinstance(key_node, yaml.ScalarNode)
                else key_node.value
            )
            child = (*path, key)
            lines[child] = key_node.start_mark.line + 1
            value = _build(value_node, child, lines)
            lines[child] = key_node.start_mark.line + 1  # point at the key, not its nested value
            result[key] = value
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_build(item, (*path, index), lines) for index, item in enumerate(node.value)]
    # Scalars: let the safe constructor decide int/float/bool/null exactly as yaml.safe_load would.
    return _construct_scalar(node)


def _construct_scalar(node: yaml.Node) -> Any:
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


_DISCRIMINATORS = ("protocol", "type")


def _without_union_tags(loc: Path_, data: Any) -> Path_:
    """pydantic puts the discriminator value of a tagged union in the error location
    (instruments[0].astm.transport...); it is not a key of the file, so drop it."""
    cleaned: list[str | int] = []
    node = data
    for part in loc:
        if (
            isinstance(node, dict)
            and part not in node
            and any(node.get(d) == part for d in _DISCRIMINATORS)
        ):
            continue
        cleaned.append(part)
        if isinstance(node, dict):
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            node = None
    return tuple(cleaned)


def _line_for(path: Path_, lines: dict[Path_, int]) -> int | None:
    # The deepest prefix of the error path that exists in the file (a missing field points at
    # the mapping that should contain it).
    for end in range(len(path), -1, -1):
        line = lines.get(tuple(path[:end]))
        if line is not None:
            return line
    return None


def validate_yaml(text: str, file: str, model: type[M]) -> tuple[M, dict[Path_, int]]:
    """Parse YAML `text` into `model`; every problem comes back as a ConfigError naming the
    file, the line and the field. Returns the model and the line of every path in the file."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError([ConfigProblem(file, line, "", f"not valid YAML: {problem}")]) from None
    if node is None:
        raise ConfigError([ConfigProblem(file, 1, "", "the file is empty")])
    lines: dict[Path_, int] = {}
    data = _build(node, (), lines)
    if not isinstance(data, dict):
        raise ConfigError([ConfigProblem(file, 1, "", "the top level must be a mapping")])
    try:
        return model.model_validate(data), lines
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            path = _without_union_tags(tuple(error["loc"]), data)
            message = error["msg"].removeprefix("Value error, ")
            problems.append(ConfigProblem(file, _line_for(path, lines), _field_name(path), message))
        raise ConfigError(problems) from None


def read_text_file(path: str | Path) -> str:
    """A configuration-like file's text, or a ConfigError saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, "", f"cannot read the file: {exc.strerror}")]
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigProblem(str(path), None, "", f"not UTF-8 text: {exc.reason}")]
        ) from None


def load_settings_text(text: str, file: str = "<config>") -> Settings:
    """Validate configuration text; raise ConfigError with every problem found."""
    settings, lines = validate_yaml(text, file, Settings)
    cross = cross_check(settings)
    if cross:
        raise ConfigError(
            [
                ConfigProblem(file, _line_for(path, lines), _field_name(path), msg)
                for path, msg in cross
            ]
        )
    return settings


def load_settings(path: str | Path) -> Settings:
    """Read and validate a configuration file; relative paths inside it are kept as written."""
    return load_settings_text(read_text_file(path), str(path))
