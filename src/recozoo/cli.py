"""Command-line settings: ``key=value`` arguments into a typed settings dataclass.

One small parser for recozoo's ``python -m ...`` commands and the benchmark scripts. A command
states its settings once, as a dataclass whose fields carry the types and defaults and whose
docstring ``Args:`` section (or a field's ``metadata={"help": ...}``) describes each one; the
parser checks keys and types through OmegaConf and ``--help`` prints every key with its default
and description.

The convention is Hydra's, like ``train.py``: ``key=value``. ``--key value`` and ``--key=value``
are accepted as the same thing (dashes in a key read as underscores), and a true/false key also
as ``--key`` (true) or ``--no-key`` (false). One list field may take the bare arguments
(``metadata={"positional": True}``), as ``python -m recozoo.report runs/a runs/b out=board``.

Example::

    @dataclass
    class ExportSettings:
        \"\"\"Write every user's top-k.

        Args:
            run: a run folder.
            k: items per user.
        \"\"\"

        run: str = MISSING  # required
        k: int = 10

    settings = parse_settings(ExportSettings, sys.argv[1:], prog="python -m recozoo.export")
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from typing import Any, TypeVar

from omegaconf import MISSING, OmegaConf
from omegaconf.errors import OmegaConfBaseException

T = TypeVar("T")

#: arguments that print the help instead of running
HELP_FLAGS = ("-h", "--help")
#: field metadata that makes a list field take the bare arguments
POSITIONAL = "positional"
_KEY = re.compile(r"^[A-Za-z_][\w]*(?:\.[\w]+)*$")  # a key (or dotted key) before "="
_BOOLS = ("true", "false", "yes", "no", "on", "off", "1", "0")

_SECTION = re.compile(r"^(\s*)([A-Z][A-Za-z ]*):\s*$")  # "Args:", "Returns:", "Example:"
_ENTRY = re.compile(r"^(\s*)([A-Za-z_][\w]*(?:\s*[/,]\s*[A-Za-z_][\w]*)*)\s*(?:\([^)]*\))?:"
                    r"(?:\s+(.*))?$")


def docstring_args(cls: type) -> dict[str, str]:
    """Each name of the ``Args:`` section of ``cls``'s docstring with its description on one line
    (continuation lines joined). An entry ``a / b: text`` describes both ``a`` and ``b``.

    Example:
        >>> @dataclasses.dataclass
        ... class S:
        ...     '''Settings.
        ...
        ...     Args:
        ...         port: TCP port
        ...             of the server.
        ...     '''
        ...     port: int = 8000
        >>> docstring_args(S)
        {'port': 'TCP port of the server.'}
    """
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    found: dict[str, list[str]] = {}
    in_args, section_indent, entry_indent = False, 0, None
    current: list[str] = []
    for line in lines:
        indent = len(line) - len(line.lstrip())
        section = _SECTION.match(line)
        if not in_args:
            if section and section.group(2) == "Args":
                in_args, section_indent, entry_indent = True, indent, None
            continue
        if not line.strip():
            continue
        if indent <= section_indent:  # the next section (Returns:, Example:) or plain text
            break
        entry = _ENTRY.match(line)
        if entry and (entry_indent is None or indent == entry_indent):
            entry_indent = indent
            current = [entry.group(3) or ""]
            for name in re.split(r"\s*[/,]\s*", entry.group(2)):
                found[name] = current  # shared list: "a / b:" entries read alike
        elif entry_indent is not None and indent > entry_indent:
            current.append(line.strip())
    return {name: " ".join(part for part in text if part) for name, text in found.items()}


def field_help(cls: type) -> dict[str, str]:
    """The one-line description of every field of the dataclass ``cls``: its
    ``metadata["help"]`` where given, else its entry in the docstring's ``Args:`` section, else
    an empty string."""
    from_doc = docstring_args(cls)
    return {f.name: str(f.metadata.get("help") or from_doc.get(f.name, ""))
            for f in dataclasses.fields(cls)}


def format_value(value: Any) -> str:
    """A value as it would be typed on the command line (``null``, ``true``, ``[a,b]``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, str) and value == "":
        return "''"
    return str(value)


def _default(field: dataclasses.Field) -> Any:
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    if field.default is dataclasses.MISSING:
        return MISSING
    return field.default


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def help_text(cls: type, prog: str, description: str | None = None) -> str:
    """The ``--help`` page: usage, the description (default: the summary of ``cls``'s
    docstring) and every key with its type, default and one-line description."""
    if description is None:
        doc = inspect.cleandoc(cls.__doc__ or "")
        description = doc.split("\n\n", 1)[0].strip()
    hints = typing.get_type_hints(cls)
    helps = field_help(cls)
    positional = positional_field(cls)
    bare = f" <{positional}> ..." if positional else ""
    lines = [f"usage: {prog}{bare} [key=value ...]", ""]
    if description:
        lines += [inspect.cleandoc(description), ""]
    lines += ["key=value may also be written --key value or --key=value;",
              "a true/false key also --key (true) or --no-key (false)."
              + (f" Bare arguments are {positional}." if positional else ""), ""]
    lines.append("keys (lists as [a,b], nothing as null):")
    for field in dataclasses.fields(cls):
        default = _default(field)
        shown = "(required)" if default is MISSING else format_value(default)
        lines.append(f"  {field.name}={shown}  ({_type_name(hints.get(field.name, field.type))})")
        text = helps[field.name] + (" Given as the bare arguments." if field.name == positional else "")
        if text:
            lines.append(f"      {text.strip()}")
    return "\n".join(lines)


def positional_field(cls: type) -> str | None:
    """The field of ``cls`` that takes the bare arguments (``metadata={"positional": True}``),
    or None.

    Raises:
        TypeError: more than one field is marked, or the marked field is not a list.
    """
    marked = [f for f in dataclasses.fields(cls) if f.metadata.get(POSITIONAL)]
    if len(marked) > 1:
        raise TypeError(f"{cls.__name__}: one positional field at most, got "
                        f"{[f.name for f in marked]}")
    if not marked:
        return None
    hint = typing.get_type_hints(cls)[marked[0].name]
    if typing.get_origin(hint) is not list:
        raise TypeError(f"{cls.__name__}.{marked[0].name}: a positional field must be a list, "
                        f"got {_type_name(hint)}")
    return marked[0].name


def _is_bool(cls: type, key: str) -> bool:
    return typing.get_type_hints(cls).get(key) is bool


def normalise_arguments(cls: type, argv: list[str], prog: str
                        ) -> tuple[list[str], list[str]]:
    """``argv`` as ``key=value`` items and bare arguments: ``--key value`` and ``--key=value``
    become ``key=value`` (``-`` in a key read as ``_``), ``--flag`` / ``--no-flag`` of a
    true/false field ``flag=true`` / ``flag=false``.

    Raises:
        SystemExit: ``--key`` without a value, or a bare argument where the command takes none.
    """
    hint = f"({prog} --help describes every key)"
    items: list[str] = []
    bare: list[str] = []
    positional = positional_field(cls)
    i = 0
    while i < len(argv):
        arg = argv[i]
        i += 1
        if arg.startswith("--") and len(arg) > 2:
            key, has_value, value = arg[2:].partition("=")
            key = key.replace("-", "_")
            if has_value:
                items.append(f"{key}={value}")
            elif _is_bool(cls, key) and (i == len(argv) or argv[i].lower() not in _BOOLS):
                items.append(f"{key}=true")
            elif key.startswith("no_") and _is_bool(cls, key[3:]):
                items.append(f"{key[3:]}=false")
            elif i < len(argv):
                items.append(f"{key}={argv[i]}")
                i += 1
            else:
                raise SystemExit(f"{prog}: {arg} needs a value ({arg} <value> or "
                                 f"{key}=<value>) {hint}")
            continue
        key, has_value, _ = arg.partition("=")
        if has_value and _KEY.match(key.strip()):
            items.append(arg)
        elif positional:
            bare.append(arg)
        else:
            keys = ", ".join(f.name for f in dataclasses.fields(cls))
            raise SystemExit(f"{prog}: expected key=value arguments, got {[arg]}; keys: {keys} "
                             f"{hint}")
    return items, bare


def _unknown_keys(cls: type, argv: list[str]) -> list[str]:
    keys = [f.name for f in dataclasses.fields(cls)]
    messages = []
    for arg in argv:
        key = arg.split("=", 1)[0].strip().split(".", 1)[0]
        if key not in keys:
            close = difflib.get_close_matches(key, keys, n=1)
            messages.append(f"'{key}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return messages


def parse_settings(cls: type[T], argv: list[str], prog: str | None = None,
                   description: str | None = None) -> T:
    """``cls`` (a dataclass) filled from ``key=value`` arguments (or ``--key value``,
    ``--key=value``, ``--flag``, ``--no-flag``; bare arguments go to the field marked
    ``metadata={"positional": True}``, after any value given as ``key=[...]``).

    ``-h`` or ``--help`` prints `help_text` and exits with status 0. Bare arguments where the
    command takes none, unknown keys, missing required keys (default ``omegaconf.MISSING``) and
    values of the wrong type raise `SystemExit` with a message naming them.

    Args:
        cls: the settings dataclass.
        argv: the arguments, e.g. ``sys.argv[1:]``.
        prog: the command shown in the help and the errors (default: the class name).
        description: the help's text under the usage line (default: the docstring's summary).

    Example:
        >>> parse_settings(ServeSettings, ["run=logs/ease", "port=8080"]).port
        8080
    """
    prog = prog or cls.__name__
    if any(arg in HELP_FLAGS for arg in argv):
        print(help_text(cls, prog, description))
        raise SystemExit(0)
    keys = ", ".join(f.name for f in dataclasses.fields(cls))
    hint = f"({prog} --help describes every key)"
    argv, bare = normalise_arguments(cls, argv, prog)
    unknown = _unknown_keys(cls, argv)
    if unknown:
        raise SystemExit(f"{prog}: unknown key {', '.join(unknown)}; keys: {keys} {hint}")
    schema = OmegaConf.structured(cls)
    try:
        merged = OmegaConf.merge(schema, OmegaConf.from_dotlist(argv))
        if bare:  # set as values, not parsed: a path may hold "," or "["
            name = positional_field(cls)
            given = [] if OmegaConf.is_missing(merged, name) else list(merged[name])
            merged[name] = given + bare
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        raise SystemExit(f"{prog}: bad value" + (f" for {key}" if key else "") + ": "
                         f"{str(error).splitlines()[0]} {hint}") from None
    missing = sorted(OmegaConf.missing_keys(merged))
    if missing:
        raise SystemExit(f"{prog}: missing required argument(s): "
                         f"{', '.join(f'{m}=...' for m in missing)} {hint}")
    return OmegaConf.to_object(merged)  # type: ignore[return-value]
