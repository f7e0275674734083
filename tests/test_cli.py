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


def test_flags_are_aliases_of_key_value():
    by_flags = parse_settings(Settings, ["--run", "logs/a", "--k=5", "--quiet", "--high", "0.5",
                                         "--models", "[sasrec]"])
    assert by_flags == parse_settings(Settings, ["run=logs/a", "k=5", "quiet=true", "high=0.5",
                                                 "models=[sasrec]"])
    assert parse_settings(Settings, ["run=x", "--quiet", "false"]).quiet is False
    assert parse_settings(Settings, ["run=x", "quiet=true", "--no-quiet"]).quiet is False
    with pytest.raises(SystemExit, match=r"prog: --k needs a value"):
        parse_settings(Settings, ["run=x", "--k"], prog="prog")
    with pytest.raises(SystemExit, match=r"unknown key 'kk' \(did you mean 'k'\?\)"):
        parse_settings(Settings, ["run=x", "--kk", "3"], prog="prog")


@dataclass
class Folders:
    """Read folders.

    Args:
        folders: run folders.
        out: where to write.
        plots: draw the plots.
        max_cost: a key spelt with an underscore.
    """

    folders: list[str] = field(default=MISSING, metadata={"positional": True})
    out: str | None = None
    plots: bool = True
    max_cost: float = 0.05


def test_positional_field_takes_bare_arguments_in_order():
    settings = parse_settings(Folders, ["runs/a", "out=board", "runs/b,c", "--no-plots",
                                        "--max-cost", "0.1", "runs/lr=0.1"])
    assert settings == Folders(folders=["runs/a", "runs/b,c", "runs/lr=0.1"], out="board",
                               plots=False, max_cost=0.1)
    assert parse_settings(Folders, ["folders=[x]", "y"]).folders == ["x", "y"]
    with pytest.raises(SystemExit, match=r"missing required argument\(s\): folders=\.\.\."):
        parse_settings(Folders, ["out=board"], prog="prog")
    text = help_text(Folders, "prog")
    assert text.startswith("usage: prog <folders> ... [key=value ...]")
    assert "Bare arguments are folders." in text
    assert "  folders=(required)  (list[str])\n      run folders. Given as the bare arguments." in text
    assert "  max_cost=0.05  (float)" in text


def test_positional_field_must_be_one_list():
    @dataclass
    class Two:
        a: list[str] = field(default_factory=list, metadata={"positional": True})
        b: list[str] = field(default_factory=list, metadata={"positional": True})

    @dataclass
    class NotList:
        a: str = field(default="", metadata={"positional": True})

    with pytest.raises(TypeError, match=r"one positional field at most, got \['a', 'b'\]"):
        parse_settings(Two, ["x"])
    with pytest.raises(TypeError, match=r"NotList.a: a positional field must be a list"):
        parse_settings(NotList, ["x"])


#: every ``python -m recozoo.*`` command and its settings class (module, class name)
COMMANDS = [
    ("recozoo.report", "recozoo.report.__main__", "ReportSettings"),
    ("recozoo.ensemble", "recozoo.ensemble.__main__", "EnsembleSettings"),
    ("recozoo.serve", "recozoo.serve.__main__", "ServeSettings"),
    ("recozoo.serve.loadtest", "recozoo.serve.loadtest", "LoadTestSettings"),
    ("recozoo.recommend", "recozoo.recommend", "RecommendSettings"),
    ("recozoo.rerank.tradeoff", "recozoo.rerank.tradeoff", "TradeoffSettings"),
]


@pytest.mark.parametrize(("command", "module", "name"), COMMANDS)
def test_every_command_helps_with_every_key_its_default_and_a_description(
        command, module, name, capsys):
    import dataclasses
    import importlib

    settings = getattr(importlib.import_module(module), name)
    with pytest.raises(SystemExit) as exit_:
        importlib.import_module(module).main(["--help"])
    assert exit_.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"usage: python -m {command} ")
    for field_ in dataclasses.fields(settings):
        default = (field_.default_factory() if field_.default_factory is not dataclasses.MISSING
                   else field_.default)
        shown = "(required)" if default in (MISSING, dataclasses.MISSING) else format_value(default)
        line = next(i for i, text in enumerate(lines) if text.startswith(f"  {field_.name}="))
        assert lines[line].startswith(f"  {field_.name}={shown}  ("), lines[line]
        assert lines[line + 1].startswith("      ") and len(lines[line + 1].strip()) > 3, (
            f"{command}: {field_.name} has no description")


def test_every_command_answers_help_as_a_program():
    import subprocess
    import sys

    from conftest import ROOT

    modules = [c for c, _, _ in COMMANDS] + ["recozoo.data.sources"]
    script = ("import runpy, sys\n"
              f"for module in {modules!r}:\n"
              "    sys.argv = [module, '--help']\n"
              "    try:\n"
              "        runpy.run_module(module, run_name='__main__', alter_sys=True)\n"
              "    except SystemExit as exit_:\n"
              "        assert exit_.code in (0, None), (module, exit_.code)\n"
              "    print('#', module, 'helped')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for module in modules:
        assert f"# {module} helped" in result.stdout
        assert f"usage: python -m {module} " in result.stdout
