"""`recozoo.cli`: ``key=value`` arguments into a settings dataclass, errors that name the key,
and ``--help`` built from the dataclass (defaults, types, docstring Args, field metadata)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from omegaconf import MISSING

from recozoo.cli import docstring_args, field_help, format_value, help_text, parse_settings


@dataclass
class Settings:
    """Export every user's top-k.

    A second paragraph that the help leaves out.

    Args:
        run: a run folder,
            or a checkpoint in one.
        k (int): items per user.
        low / high: the bounds of
            the score window.

    Returns:
        nothing: a section after Args is not read.
    """

    run: str = MISSING
    k: int = 10
    low: float = 0.0
    high: float | None = None
    models: list[str] = field(default_factory=lambda: ["bpr", "ease"])
    quiet: bool = False
    name: str = field(default="", metadata={"help": "a label for the output."})


def test_docstring_args_joins_continuations_and_shares_slashed_entries():
    assert docstring_args(Settings) == {
        "run": "a run folder, or a checkpoint in one.", "k": "items per user.",
        "low": "the bounds of the score window.", "high": "the bounds of the score window."}
    assert field_help(Settings)["name"] == "a label for the output."  # metadata counts
    assert field_help(Settings)["quiet"] == ""  # undocumented, not invented


def test_parse_settings_fills_and_converts_values():
    settings = parse_settings(Settings, ["run=logs/a", "k=5", "high=0.5", "models=[sasrec]",
                                         "quiet=true"])
    assert settings == Settings(run="logs/a", k=5, high=0.5, models=["sasrec"], quiet=True)
    assert parse_settings(Settings, ["run=x"]).models == ["bpr", "ease"]  # fresh default


@pytest.mark.parametrize(("argv", "message"), [
    (["run=x", "kk=3"], r"prog: unknown key 'kk' \(did you mean 'k'\?\); keys: run, k, low"),
    (["run=x", "k=many"], r"prog: bad value for k: Value 'many' of type 'str' could not"),
    (["k=3"], r"prog: missing required argument\(s\): run=\.\.\."),
    (["run=x", "quiet"], r"prog: expected key=value arguments, got \['quiet'\]"),
])
def test_parse_settings_errors_name_the_key(argv, message):
    with pytest.raises(SystemExit, match=message) as error:
        parse_settings(Settings, argv, prog="prog")
    assert "prog --help" in str(error.value)


def test_help_prints_every_key_with_default_type_and_description(capsys):
    with pytest.raises(SystemExit) as exit_:
        parse_settings(Settings, ["run=x", "--help"], prog="python -m recozoo.export")
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text == help_text(Settings, "python -m recozoo.export") + "\n"
    lines = text.splitlines()
    assert lines[:3] == ["usage: python -m recozoo.export [key=value ...]", "",
                         "Export every user's top-k."]
    assert "second paragraph" not in text and "section after Args" not in text
    body = "\n".join(lines[lines.index("keys (lists as [a,b], nothing as null):") + 1:])
    assert body.splitlines() == [
        "  run=(required)  (str)", "      a run folder, or a checkpoint in one.",
        "  k=10  (int)", "      items per user.",
        "  low=0.0  (float)", "      the bounds of the score window.",
        "  high=null  (float | None)", "      the bounds of the score window.",
        "  models=[bpr,ease]  (list[str])",
        "  quiet=false  (bool)",
        "  name=''  (str)", "      a label for the output.",
    ]
    assert help_text(Settings, "x", description="Custom.").splitlines()[2] == "Custom."


def test_format_value_writes_command_line_values():
    assert [format_value(v) for v in (None, True, [1, "a"], "", 2.5)] == [
        "null", "true", "[1,a]", "''", "2.5"]
