"""Every `codeinfer ... --help`: each option's default shown once when it has one, and help texts
that speak of the user's machine, not of one the project was built on; `codeinfer --version`."""
import argparse
import importlib.metadata
import re

import pytest

from engine.entrypoints.cli.main import build_parser, main


def all_parsers(parser=None, prog=()) -> list[tuple[str, argparse.ArgumentParser]]:
    """(command line, parser) of the script and of every subcommand, nested ones included."""
    parser = parser or build_parser()
    found = [(" ".join(("codeinfer", *prog)), parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += all_parsers(sub, (*prog, name))
    return found


PARSERS = all_parsers()


def option_blocks(help_text: str) -> dict[str, str]:
    """The help of each option, keyed by its first flag ("-m", "--model", or a positional)."""
    blocks, current = {}, None
    for line in help_text.splitlines():
        entry = re.match(r"^  (\S+?)[ ,]|^  (\S+)$", line)
        if entry:
            current = entry.group(1) or entry.group(2)
            blocks[current] = line
        elif current is not None and line.startswith("    "):
            blocks[current] += "\n" + line
        else:
            current = None
    return blocks


def shows_a_default(action: argparse.Action) -> bool:
    default = action.default
    return bool(action.option_strings) and action.help is not argparse.SUPPRESS and not (
        default is None or isinstance(default, bool) or default is argparse.SUPPRESS or default == [])


@pytest.fixture(autouse=True)
def _width(monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps help at the terminal's width


def test_the_walk_finds_every_command():
    assert {prog for prog, _ in PARSERS} >= {"codeinfer", "codeinfer serve", "codeinfer generate",
                                             "codeinfer bench", "codeinfer eval humaneval"}


@pytest.mark.parametrize("prog, parser", PARSERS, ids=[prog for prog, _ in PARSERS])
def test_each_default_is_shown_once(prog, parser):
    blocks = option_blocks(parser.format_help())
    for flag, block in blocks.items():
        assert block.count("default:") <= 1, f"{prog} {flag} shows its default twice:\n{block}"
    for action in parser._actions:
        if shows_a_default(action):
            block = blocks[action.option_strings[0]]
            assert "default" in block.lower(), f"{prog} {action.option_strings[0]}: no default:\n{block}"


@pytest.mark.parametrize("prog, parser", PARSERS, ids=[prog for prog, _ in PARSERS])
def test_help_speaks_of_the_users_machine(prog, parser):
    text = parser.format_help()
    assert not re.search(r"\bVMs?\b|virtual machine|2-core|\bEPYC\b", text, re.IGNORECASE), text


def test_every_option_has_help():
    for prog, parser in PARSERS:
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):  # its commands have theirs
                assert action.help, f"{prog} {action.option_strings or action.dest} has no help"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"codeinfer {importlib.metadata.version('codeinfer')}\n"
