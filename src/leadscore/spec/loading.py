"""Reading model files: every problem reported at once as ``file:line: path: message``.

:func:`validate_yaml` does it for any file checked by a pydantic schema (the triggers file too).
The YAML is parsed once into plain data and once into a node tree that remembers the line of
every key and item, so schema errors (from pydantic) and cross-field errors (from
:func:`~leadscore.spec.model.semantic_issues`) can both point at a line.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from leadscore.errors import LeadscoreError, ModelError, ModelIssue
from leadscore.spec.conditions import OPERATORS, text_problem
from leadscore.spec.model import Loc, Model, fmt_loc, resolve, semantic_issues
from leadscore.spec.schema import (
    ActivityRuleSpec,
    ExampleExpectSpec,
    ExampleSpec,
    GroupSpec,
    InactivityRuleSpec,
    ModelSpec,
    ProfileRuleSpec,
)

__all__ = ["load_model", "load_models", "model_json_schema", "parse_model", "validate_yaml"]

S = TypeVar("S", bound=BaseModel)

_KNOWN_KEYS = sorted(
    {
        *(
            f.alias or n
            for cls in (
                ModelSpec,
                GroupSpec,
                ProfileRuleSpec,
                ActivityRuleSpec,
                InactivityRuleSpec,
                ExampleSpec,
                ExampleExpectSpec,
            )
            for n, f in cls.model_fields.items()
        ),
        *OPERATORS,
        "field",
        "all",
        "any",
        "not",
    }
)


# libyaml's parser when PyYAML has it (about ten times faster: the editor checks as you type).
# It recurses in C without a limit, so text that could nest flow collections deeply (any file
# with many brackets) goes to PyYAML's parser, which stops at Python's recursion limit.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FLOW_BRACKETS = 2000


Written = dict[int, set[int]]  # mapping node id -> ids of the key nodes written in it


def _compose(text: str, loader_class: type[Any]) -> tuple[yaml.Node | None, Any, Written]:
    """One pass: the document's nodes (for line numbers), the data built from them, and the
    key nodes each mapping holds as written (its merge keys, ``<<``, left out): PyYAML's
    constructor adds the merged pairs to the mapping's nodes (flatten_mapping), and only
    keys written twice in the mapping itself are duplicates."""
    loader = loader_class(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, None, {}
        written: Written = {}
        seen: set[int] = set()
        todo = [node]
        while todo:  # a node that aliases name is walked once (aliases may even loop)
            current = todo.pop()
            if id(current) in seen:
                continue
            seen.add(id(current))
            if isinstance(current, yaml.MappingNode):
                written[id(current)] = {
                    id(k) for k, _ in current.value if k.tag != "tag:yaml.org,2002:merge"
                }
            todo.extend(_children(current))
        return node, loader.construct_document(node), written
    finally:
        loader.dispose()


def parse_model(text: str, source: str = "<model>") -> Model:
    """Validate model text (YAML) and return the resolved :class:`Model`.

    Raises :class:`~leadscore.errors.ModelError` listing every problem found.
    """
    spec = validate_yaml(
        text,
        source,
        ModelSpec,
        error=ModelError,
        what="a model file",
        known_keys=_KNOWN_KEYS,
        semantic=lambda raw, _spec: semantic_issues(raw),
    )
    fingerprint = hashlib.sha256(text.encode()).hexdigest()[:16]
    return resolve(spec, source=source, fingerprint=fingerprint)


def validate_yaml(
    text: str,
    source: str,
    schema: type[S],
    *,
    error: Callable[[list[ModelIssue]], LeadscoreError],
    what: str,
    known_keys: Sequence[str],
    semantic: Callable[[dict[str, Any], S | None], Iterable[tuple[Loc, str]]],
    empty_is_error: bool = True,
    reword: Callable[[ModelIssue], ModelIssue] | None = None,
) -> S:
    """Parse YAML ``text`` and validate it against the pydantic ``schema``, reporting every
    problem at once as ``error([...issues])``, each at its line: YAML syntax, duplicate keys,
    keys YAML reads as true/false, schema errors (an unknown key with the closest of
    ``known_keys``) and the ``semantic`` checks' ``(location, message)`` pairs.

    Model files and triggers files are both read with it. ``reword`` may restate an issue in
    the file's own terms.
    """
    node = raw = None
    written: Written = {}
    try:
        if text.count("[") + text.count("{") <= MAX_FLOW_BRACKETS:
            node, raw, written = _compose(text, _Loader)
    except yaml.YAMLError:
        pass
    try:  # a broken file again with PyYAML's own parser: its messages and lines are the better
        if node is None and text.strip():
            node, raw, written = _compose(text, yaml.SafeLoader)
    except RecursionError:
        raise error([ModelIssue(source, None, "", "not valid YAML: nested too deeply")]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise error([ModelIssue(source, line, "", f"not valid YAML: {problem}")]) from None
    loop = _alias_loop(node)
    if loop is None and _expanded_size(node) > MAX_EXPANDED_NODES:
        raise error(
            [
                ModelIssue(
                    source,
                    None,
                    "",
                    f"not valid here: its aliases (*name), written out, make more than "
                    f"{MAX_EXPANDED_NODES:,} values",
                )
            ]
        )
    if loop is not None:
        raise error(
            [
                ModelIssue(
                    source,
                    loop,
                    "",
                    "not valid here: an alias (*name) inside the "
                    "node it names would make it contain itself",
                )
            ]
        )
    if raw is None:
        if empty_is_error:
            raise error([ModelIssue(source, 1, "", "the file is empty")])
        raw = {}
    if not isinstance(raw, dict):
        raise error([ModelIssue(source, 1, "", f"{what} must be a mapping of keys")])
    issues: list[ModelIssue] = []
    lines: dict[Loc, int] = {}
    if node is not None:
        _index_lines(node, (), lines, issues, source, written)
    for loc, problem in _unstorable(raw, ()):
        issues.append(ModelIssue(source, _line(lines, loc), fmt_loc(loc), problem))
    spec: S | None = None
    try:
        spec = schema.model_validate(raw)
    except ValidationError as exc:
        issues.extend(_schema_issues(exc, raw, lines, source, known_keys))
    for loc, message in semantic(raw, spec):
        issues.append(ModelIssue(source, _line(lines, loc), fmt_loc(loc), message))
    if reword is not None:
        issues = [reword(i) for i in issues]
    if issues or spec is None:
        unique = {(i.line or 0, i.path, i.message): i for i in issues}
        raise error([unique[k] for k in sorted(unique)])
    return spec


def load_model(path: str | Path) -> Model:
    """Load and validate one model file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError([ModelIssue(str(p), None, "", "no such file")]) from None
    except IsADirectoryError:
        raise ModelError([ModelIssue(str(p), None, "", "is a directory, not a file")]) from None
    except UnicodeDecodeError as exc:
        raise ModelError([ModelIssue(str(p), None, "", f"not UTF-8 text: {exc}")]) from None
    return parse_model(text, source=str(p))


def load_models(paths: Iterable[str | Path]) -> list[Model]:
    """Load score sheets: files, and directories of ``*.yaml``/``*.yml`` files.

    Every file is validated; all problems of all files are raised together. Sheet names (the
    models' ``name``) must be unique.
    """
    files: list[Path] = []
    for path in paths:
        p = Path(path)
        if p.is_dir():
            found = sorted([*p.glob("*.yaml"), *p.glob("*.yml")])
            if not found:
                raise ModelError([ModelIssue(str(p), None, "", "no *.yaml model files here")])
            files.extend(found)
        else:
            files.append(p)
    models: list[Model] = []
    issues: list[ModelIssue] = []
    for f in files:
        try:
            models.append(load_model(f))
        except ModelError as exc:
            issues.extend(exc.issues)
    names: dict[str, str] = {}
    for m in models:
        if m.name in names:
            issues.append(
                ModelIssue(
                    m.source, None, "name", f"sheet name {m.name!r} is also used by {names[m.name]}"
                )
            )
        names[m.name] = m.source
    if issues:
        raise ModelError(issues)
    return models


def model_json_schema() -> dict[str, Any]:
    """The JSON Schema of a model file, for editors (YAML language servers read it)."""
    schema = ModelSpec.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "leadscore model, version 1"
    return schema


# --- line numbers -----------------------------------------------------------------------------


def _index_lines(
    node: yaml.Node,
    loc: Loc,
    lines: dict[Loc, int],
    issues: list[ModelIssue],
    source: str,
    written: Written,
) -> None:
    lines.setdefault(loc, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()

        keys = written.get(id(node))

        def own(key_node: yaml.Node) -> bool:
            """Written in this mapping, not merged into it (``<<: *base``): PyYAML puts the
            merged pairs first, and a key written here overrides one merged."""
            return keys is None or id(key_node) in keys

        for key_node, value_node in node.value:
            key = key_node.value
            if key_node.tag.endswith(":bool"):
                issues.append(
                    ModelIssue(
                        source,
                        key_node.start_mark.line + 1,
                        fmt_loc((*loc, key)),
                        f"YAML reads the key {key!r} as true/false: quote it ('{key}') or "
                        "rename it",
                    )
                )
            if key in seen and own(key_node):
                issues.append(
                    ModelIssue(
                        source, key_node.start_mark.line + 1, fmt_loc((*loc, key)), "duplicate key"
                    )
                )
            if own(key_node):
                seen.add(key)
            lines[(*loc, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*loc, key), lines, issues, source, written)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*loc, i), lines, issues, source, written)


def _unstorable(value: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Text that no store can keep (:func:`~leadscore.spec.conditions.text_problem`), which
    YAML's escapes can write ("\\0", "\\ud800"), where it is in the file's data."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            yield loc, problem
    elif isinstance(value, dict):
        for k, v in value.items():
            key_problem = text_problem(k) if isinstance(k, str) else None
            if key_problem:
                yield (*loc, k), f"a key: {key_problem}"
            yield from _unstorable(v, (*loc, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _unstorable(v, (*loc, i))


def _children(node: yaml.Node) -> list[yaml.Node]:
    """A node's keys and values (a mapping's), items (a sequence's), or none."""
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _alias_loop(root: yaml.Node | None) -> int | None:
    """The line of a node that contains itself (``a: &x [*x]``: YAML allows it, a model
    cannot hold it), or None. Each node is walked once, however many aliases name it."""
    if root is None:
        return None
    done: set[int] = set()
    open_: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            open_.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in done:
            continue
        if id(node) in open_:
            return int(node.start_mark.line) + 1
        open_.add(id(node))
        stack.append((node, True))
        children = _children(node)
        for child in reversed(children):
            if id(child) in open_:
                return int(child.start_mark.line) + 1
            stack.append((child, False))
    return None


MAX_EXPANDED_NODES = 200_000  # values and keys, each alias counted as what it names


def _expanded_size(root: yaml.Node | None) -> int:
    """How many nodes ``root`` (which holds no loop) has with every alias written out: the
    walks after it (line numbers, the schema) visit that many. Each node is sized once."""
    if root is None:
        return 0
    size: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, ready = stack.pop()
        if id(node) in size:
            continue
        children = _children(node)
        if ready:
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in size)
    return size[id(root)]


def _line(lines: Mapping[Loc, int], loc: Loc) -> int | None:
    key = tuple(str(p) if not isinstance(p, int) else p for p in loc)
    while key:
        if key in lines:
            return lines[key]
        key = key[:-1]
    return lines.get((), 1)


# --- pydantic errors in the user's words ------------------------------------------------------


def _schema_issues(
    exc: ValidationError,
    raw: Any,
    lines: Mapping[Loc, int],
    source: str,
    known_keys: Sequence[str],
) -> list[ModelIssue]:
    by_loc: dict[Loc, list[str]] = {}
    for err in exc.errors():
        if err["type"] == "invalid_key":
            continue  # a key YAML read as true/false: reported where the lines are indexed
        loc = _data_loc(err["loc"], raw, err["type"])
        message = _message(err, loc, known_keys)
        messages = by_loc.setdefault(loc, [])
        if message not in messages:
            messages.append(message)
    out = []
    for loc, messages in by_loc.items():
        # A union reports once per member: say it once, with the value once at the end.
        suffixes = {m[m.index(", got ") :] for m in messages if ", got " in m}
        if len(messages) > 1 and len(suffixes) == 1:
            suffix = suffixes.pop()
            messages = [m.removesuffix(suffix) for m in messages]
            text = " or ".join(messages) + suffix
        else:
            text = " or ".join(messages)
        out.append(ModelIssue(source, _line(lines, loc), fmt_loc(loc), text))
    return out


def _data_loc(loc: tuple[int | str, ...], raw: Any, kind: str) -> Loc:
    """Keep the part of pydantic's location that names real places in the data."""
    out: list[str | int] = []
    here = raw
    parts = [p for p in loc if not (isinstance(p, str) and p.startswith("<"))]
    for n, part in enumerate(parts):
        last = n == len(parts) - 1
        if isinstance(here, Mapping) and part in here:
            out.append(part)
            here = here[part]
        elif isinstance(here, list) and isinstance(part, int) and 0 <= part < len(here):
            out.append(part)
            here = here[part]
        elif kind == "missing" and last and isinstance(here, Mapping):
            out.append(part)
            break
        else:
            break
    return tuple(out)


_TYPE_WORDS = {
    "string_type": "must be text",
    "finite_number": "must be a finite number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "datetime_type": "must be a date-time such as 2026-06-30T12:00:00Z",
    "datetime_parsing": "must be a date-time such as 2026-06-30T12:00:00Z",
    "datetime_from_date_parsing": "must be a date-time such as 2026-06-30T12:00:00Z",
}

_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


_SHOWN = 80  # characters of a value repeated in an error


def _message(err: Any, loc: Loc, known_keys: Sequence[str]) -> str:
    kind: str = err["type"]
    given = err.get("input")
    ctx = err.get("ctx") or {}
    got = f", got {given!r}" if isinstance(given, (str, int, float, bool)) or given is None else ""
    if loc and loc[-1] == "secret":  # a webhook's secret is not repeated in an error
        got = ""
    elif isinstance(given, str) and len(given) > _SHOWN:
        got = f", got {given[:_SHOWN]!r}... ({len(given):,} characters)"
    if kind == "missing":
        return "required"
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else "?"
        # a key known elsewhere in the file (``rules`` of a group) is no hint for itself here
        close = difflib.get_close_matches(key, [k for k in known_keys if k != key], n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return f"unknown key {key!r}{hint}"
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        bound = ctx.get(name)
        shown = f"{bound:g}" if isinstance(bound, (int, float)) else str(bound)
        return f"must be {sign} {shown}{got}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}{got}"
    if kind == "string_pattern_mismatch":
        return f"must start with a letter or digit and use only letters, digits, '-', '_', '.'{got}"
    if kind == "too_short":
        return "must not be empty"
    if kind in ("too_long",):
        return "has too many items"
    if kind == "value_error":
        text = str(ctx.get("error") or err.get("msg", ""))
        return text.removeprefix("Value error, ")
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        return (
            "must be a condition: {field: NAME, OP: VALUE}, {all: [...]}, {any: [...]} "
            "or {not: ...}"
        )
    if kind in _TYPE_WORDS:
        return _TYPE_WORDS[kind] + got
    msg: str = err.get("msg", kind)
    return msg[:1].lower() + msg[1:] + got
