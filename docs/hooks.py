"""MkDocs hook: tables generated from the code, so the docs cannot drift from it.

A line that is exactly one of these placeholders is replaced by what the code says:

* ``<!-- generated: errors -->``: the error table, ``progress_stream.contract.errors.error_table()``;
* ``<!-- generated: settings -->``: every ``PROGRESS_*`` setting of ``progress_stream.server.settings.Settings``;
* ``<!-- generated: gateway-status -->``: the gateway's binary status codes (``contract.gateway.ERROR_CODES``);
* ``<!-- generated: recipe -->``: the default training recipe, ``progress_stream.training.config.TrainConfig()``,
  as a TOML block.

Registered in mkdocs.yml (``hooks: [docs/hooks.py]``); the tests import it by path.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

PLACEHOLDER = re.compile(r"^<!-- generated: ([\w-]+) -->$")


def errors_table() -> str:
    from progress_stream.contract.errors import error_table

    return error_table()


def gateway_status_table() -> str:
    from progress_stream.contract.gateway import ERROR_CODES

    rows = ["| status | code |", "|---|---|", "| 0 | answered |"]
    rows += [f"| {i} | `{code}` |" for i, code in enumerate(ERROR_CODES, start=1)]
    return "\n".join(rows)


def _type_name(annotation: Any) -> str:
    """``int``, ``path, optional``, ``one of native, asgi``: readable, and free of the ``|`` a table splits on."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        named = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(named) + (", optional" if type(None) in args else "")
    return getattr(annotation, "__name__", str(annotation)).lower()


def _bounds(metadata: list[Any]) -> str:
    signs = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}
    return ", ".join(f"{signs[k]} {getattr(m, k)}" for m in metadata for k in signs if hasattr(m, k))


def _default(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Enum):
        value = value.value
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return f"`{text}`" if text else "empty"


def settings_table() -> str:
    from progress_stream.server.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    rows = ["| variable | type | default | meaning |", "|---|---|---|---|"]
    for name, field in Settings.model_fields.items():
        kind = _type_name(field.annotation)
        if bounds := _bounds(field.metadata):
            kind += f", {bounds}"
        default = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
        meaning = (field.description or "").replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | {kind} | {_default(default)} | {meaning} |")
    return "\n".join(rows)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string for these values


def _field_comments(cls: type) -> dict[str, str]:
    """The trailing ``# comment`` of each field in the class's source: what the code says about it."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        if match := re.match(r"\s+(\w+): [^=]+=[^#]+#\s*(.+)$", line):
            comments[match[1]] = match[2].strip()
    return comments


def recipe_block() -> str:
    from progress_stream.training.config import TrainConfig

    config = TrainConfig()
    comments = _field_comments(TrainConfig)
    lines = []
    for field in dataclasses.fields(config):
        value = _toml_value(getattr(config, field.name))
        note = f"  # {comments[field.name]}" if field.name in comments else ""
        lines.append(f"{field.name} = {value}{note}".rstrip())
    width = max(len(line.split("  #", 1)[0]) for line in lines)
    aligned = [
        f"{head.ljust(width)}  #{tail}" if tail else head for head, _, tail in (line.partition("  #") for line in lines)
    ]
    return "```toml\n" + "\n".join(aligned) + "\n```"


GENERATORS: dict[str, Callable[[], str]] = {
    "errors": errors_table,
    "gateway-status": gateway_status_table,
    "settings": settings_table,
    "recipe": recipe_block,
}


def render(markdown: str) -> str:
    """Replace every placeholder line; an unknown placeholder name is an error (the build fails)."""
    out = []
    for line in markdown.split("\n"):
        match = PLACEHOLDER.match(line.strip())
        if match is None:
            out.append(line)
        elif match[1] in GENERATORS:
            out.append(GENERATORS[match[1]]())
        else:
            raise ValueError(f"unknown generated table {match[1]!r}; known: {', '.join(GENERATORS)}")
    return "\n".join(out)


def on_page_markdown(markdown: str, page: Any = None, config: Any = None, files: Any = None) -> str:
    try:
        return render(markdown)
    except ValueError as exc:
        where = Path(page.file.src_path) if page is not None else "markdown"
        raise ValueError(f"{where}: {exc}") from exc
