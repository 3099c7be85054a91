"""Reading a rules file, with every problem reported as ``FILE:LINE: field: message``.

PyYAML's node tree keeps each node's line; the data built from it is
validated by pydantic, and each error's location is walked back down the
node tree to the line an operator has to edit.
"""

from __future__ import annotations

import difflib
import re
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError

from incident.rules.schema_types import RULES_ERROR_TYPE
from incident.rules.schemas import Rules

Location = tuple[str | int, ...]
_MERGE_TAG = "tag:yaml.org,2002:merge"
_PYDANTIC_PREFIX = re.compile(r"^Input should be ")


class RulesError(ValueError):
    """An unreadable or invalid rules file; the message names the file, line and field."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


def load_rules(path: Path | str | None) -> Rules:
    """The rules in ``path``, or the built-in defaults when ``path`` is None."""
    if path is None:
        return Rules()
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RulesError(f"{path}: no such rules file") from None
    except UnicodeDecodeError as error:
        raise RulesError(f"{path}: not UTF-8 text ({error.reason})") from None
    except OSError as error:
        raise RulesError(f"{path}: cannot read: {error.strerror or error}") from None
    return parse_rules(text, source=str(path))


def parse_rules(text: str, source: str = "<rules>") -> Rules:
    """Validate rules file text; an empty document gives the built-in defaults."""
    root, data = _compose_and_construct(text, source)
    if root is None or data is None:
        return Rules()
    try:
        return Rules.model_validate(data)
    except ValidationError as error:
        raise _rules_error(error, root, source) from None


def _compose_and_construct(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    loader = yaml.SafeLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return None, None
        _reject_duplicate_keys(root, (), source, checked=set())
        # Constructing from the same node tree keeps data and lines in step.
        return root, loader.construct_document(root)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = "; ".join(part for part in (error.context, error.problem) if part)
        if error.context_mark is not None and error.context_mark.line + 1 != line:
            problem += f" (started at line {error.context_mark.line + 1})"
        raise RulesError(f"{source}:{line}: invalid YAML: {problem}", line=line) from None
    except yaml.YAMLError as error:
        raise RulesError(f"{source}: invalid YAML: {error}") from None
    finally:
        loader.dispose()


def _reject_duplicate_keys(
    node: yaml.Node, path: Location, source: str, *, checked: set[int]
) -> None:
    # PyYAML keeps the last of two equal keys without a word, which would hide
    # half of a section as surely as a typo would.
    if id(node) in checked:
        # An alias repeats a node already checked; it may even contain itself.
        return
    checked.add(id(node))
    if isinstance(node, yaml.MappingNode):
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG or not isinstance(key_node, yaml.ScalarNode):
                continue
            line = key_node.start_mark.line + 1
            if key_node.value in first_line:
                raise RulesError(
                    f"{source}:{line}: {format_location(path + (key_node.value,))}: duplicate key "
                    f"(first at line {first_line[key_node.value]})",
                    line=line,
                )
            first_line[key_node.value] = line
            _reject_duplicate_keys(value_node, path + (key_node.value,), source, checked=checked)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _reject_duplicate_keys(item, path + (index,), source, checked=checked)


def _rules_error(error: ValidationError, root: yaml.Node, source: str) -> RulesError:
    # Union members each report their own error for one value (`slack: 5` is
    # neither a boolean nor a string): those are shown as one problem.
    problems: dict[tuple[int, str], list[str]] = {}
    given: dict[tuple[int, str], str] = {}
    for detail in error.errors(include_url=False):
        location, message, shown_input = _explain(detail)
        line, shown_location = _locate(root, location)
        place = (line, format_location(shown_location))
        problems.setdefault(place, []).append(message)
        given.setdefault(place, shown_input)
    lines = [
        f"{source}:{line}: {path}: {_join(messages)}{given[line, path]}"
        for (line, path), messages in sorted(problems.items(), key=lambda item: item[0][0])
    ]
    return RulesError("\n".join(lines), line=min(line for line, _ in problems))


def _join(messages: list[str]) -> str:
    prefix = "must be "
    messages = [_PYDANTIC_PREFIX.sub(prefix, message, count=1) for message in messages]
    if len(messages) > 1 and all(message.startswith(prefix) for message in messages):
        alternatives = [message.removeprefix(prefix) for message in messages]
        return prefix + " or ".join(dict.fromkeys(alternatives))
    return "; ".join(dict.fromkeys(messages))


def _explain(detail: Any) -> tuple[Location, str, str]:
    """The location, an operator-facing message and, if worth showing, the value given."""
    location: Location = tuple(detail["loc"])
    kind: str = detail["type"]
    context: dict[str, Any] = detail.get("ctx") or {}
    given = detail.get("input")
    shown_input = f", got {given!r}"
    if kind == RULES_ERROR_TYPE:
        return location + tuple(context.get("at", ())), context["message"], ""
    if kind == "extra_forbidden":
        return location, _unknown_key_message(location), ""
    if kind == "missing":
        return location, "required", ""
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        field = context.get("discriminator", "").strip("'")
        expected = context.get("expected_tags", "")
        if kind == "union_tag_not_found":
            return location + (field,), f"required, one of {expected}", ""
        return location + (field,), f"must be one of {expected}", f", got {context.get('tag')!r}"
    if kind in ("enum", "literal_error"):
        return location, f"must be one of {context.get('expected')}", shown_input
    if kind in ("tuple_type", "list_type"):
        return location, "must be a list", shown_input
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return location, "must be a mapping of keys to values", shown_input
    if kind == "string_pattern_mismatch":
        return (
            location,
            ("must start with a letter or digit and hold only letters, digits, '_', '.' and '-'"),
            shown_input,
        )
    if isinstance(given, str | int | float | bool) or given is None:
        return location, detail["msg"], shown_input
    return location, detail["msg"], ""


def _unknown_key_message(location: Location) -> str:
    key = str(location[-1])
    known = _known_keys(location[:-1])
    if not known:
        return f"unknown key {key!r}"
    message = f"unknown key {key!r}"
    if close := difflib.get_close_matches(key, known, n=1):
        message += f"; did you mean {close[0]!r}?"
    return f"{message} (expected one of: {', '.join(known)})"


def _known_keys(location: Location) -> list[str]:
    """The keys the model at ``location`` accepts, found by walking the type annotations."""
    annotation: Any = Rules
    for segment in location:
        annotation = _unwrapped(annotation)
        if isinstance(segment, int) and get_origin(annotation) is tuple:
            annotation = get_args(annotation)[0]
        elif _is_model(annotation):
            field = _field_named(annotation, str(segment))
            if field is None:
                return []
            annotation = field.annotation
        elif get_origin(annotation) in (Union, types.UnionType):
            # A tagged union's location holds the tag, here the action name.
            tagged = [member for member in get_args(annotation) if _tag_of(member) == segment]
            if not tagged:
                return []
            annotation = tagged[0]
        else:
            return []
    annotation = _unwrapped(annotation)
    if not _is_model(annotation):
        return []
    return [field.alias or name for name, field in annotation.model_fields.items()]


def _unwrapped(annotation: Any) -> Any:
    while True:
        origin = get_origin(annotation)
        if origin is Annotated:
            annotation = get_args(annotation)[0]
        elif origin in (Union, types.UnionType):
            members = [arg for arg in get_args(annotation) if arg is not type(None)]
            if len(members) != 1:
                return annotation
            annotation = members[0]
        else:
            return annotation


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _field_named(model: type[BaseModel], key: str) -> Any:
    for name, field in model.model_fields.items():
        if key in (name, field.alias):
            return field
    return None


def _tag_of(member: Any) -> str | None:
    if not _is_model(member) or "action" not in member.model_fields:
        return None
    annotation = member.model_fields["action"].annotation
    if get_origin(annotation) is Literal and len(get_args(annotation)) == 1:
        return get_args(annotation)[0]
    return None


def _locate(root: yaml.Node, location: Location) -> tuple[int, Location]:
    """The line to blame for ``location`` and the location as the file spells it.

    The line is that of the deepest node that exists: the bad value itself, or
    the mapping that lacks a required key. Segments that exist only in the
    model (a union's tag or member type) are left out of the shown location.
    """
    node = root
    line = root.start_mark.line + 1
    shown: list[str | int] = []
    for position, segment in enumerate(location):
        is_last = position == len(location) - 1
        if isinstance(node, yaml.MappingNode):
            found = _mapping_entry(node, segment)
            if found is not None:
                key_node, node = found
                # A scalar is blamed on its own line; a block value on its key's.
                anchor = node if isinstance(node, yaml.ScalarNode) else key_node
                line = anchor.start_mark.line + 1
                shown.append(segment)
                continue
            if not is_last and isinstance(segment, str):
                continue
            shown.extend(location[position:])
            break
        if (
            isinstance(node, yaml.SequenceNode)
            and isinstance(segment, int)
            and 0 <= segment < len(node.value)
        ):
            node = node.value[segment]
            line = node.start_mark.line + 1
            shown.append(segment)
            continue
        if isinstance(node, yaml.ScalarNode):
            # What remains names union members, not places in the file.
            break
        shown.extend(location[position:])
        break
    return line, tuple(shown)


def _mapping_entry(
    node: yaml.MappingNode, segment: str | int
) -> tuple[yaml.Node, yaml.Node] | None:
    # Later entries win, as they did when the data was constructed.
    for key_node, value_node in reversed(node.value):
        if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(segment):
            return key_node, value_node
    return None


def format_location(location: Location) -> str:
    """``('remediations', 0, 'with', 'url')`` → ``remediations[0].with.url``."""
    shown = ""
    for segment in location:
        shown += f"[{segment}]" if isinstance(segment, int) else f".{segment}"
    return shown.lstrip(".") or "(top level)"
