"""Template files as YAML that remembers where each value is (for ``file:line`` problems).

PyYAML's safe loader with two additions: every mapping records the line of each key and
of each value's text (a block scalar's text starts on the line after ``|``), and a key
defined twice is recorded instead of silently keeping the last value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


class LineMapping(dict):  # type: ignore[type-arg]
    """A YAML mapping that remembers the line of each key and of each value's text."""

    line: int
    key_lines: dict[str, int]
    body_lines: dict[str, int]


class LineSequence(list):  # type: ignore[type-arg]
    line: int
    item_lines: list[int]


class LineLoader(yaml.SafeLoader):
    """SafeLoader that records line numbers and refuses duplicate keys (YAML keeps the last)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.duplicates: list[tuple[Any, int]] = []


def _construct_mapping(loader: LineLoader, node: yaml.MappingNode) -> LineMapping:
    loader.flatten_mapping(node)
    result = LineMapping()
    result.line = node.start_mark.line + 1
    result.key_lines, result.body_lines = {}, {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
        if key in result:
            loader.duplicates.append((key, key_node.start_mark.line + 1))
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = key_node.start_mark.line + 1
        # A block scalar (| or >) starts on the line after its indicator.
        block = isinstance(value_node, yaml.ScalarNode) and value_node.style in ("|", ">")
        result.body_lines[key] = value_node.start_mark.line + 1 + (1 if block else 0)
    return result


def _construct_sequence(loader: LineLoader, node: yaml.SequenceNode) -> LineSequence:
    result = LineSequence(loader.construct_object(child, deep=True) for child in node.value)
    result.line = node.start_mark.line + 1
    result.item_lines = [child.start_mark.line + 1 for child in node.value]
    return result


LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def plain(value: Any) -> Any:
    """Drop the line bookkeeping (for contexts handed to the renderer)."""
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [plain(item) for item in value]
    return value


def template_files(directory: Path) -> list[Path]:
    return sorted(path for path in Path(directory).iterdir()
                  if path.is_file() and path.suffix in (".yaml", ".yml")
                  and not path.name.startswith((".", "_")))
