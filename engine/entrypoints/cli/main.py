"""The `codeinfer` console script: one parser, a subcommand per module in engine/entrypoints/cli/."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each name is a module engine/entrypoints/cli/<name>.py with register(subparsers).
COMMANDS = ("generate", "serve", "bench", "convert", "edit", "eval")


class HelpFormatter(argparse.HelpFormatter):
    """Shows each option's default once: appended as "(default: X)" unless the help already
    speaks of its default, or there is nothing to show (None, an on/off flag, a positional)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("default" in text.lower() or not action.option_strings or default is None
                or isinstance(default, bool) or default is argparse.SUPPRESS
                or default == []):
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


class _Parser(argparse.ArgumentParser):
    """Every subcommand's parser (and theirs) formats its help with HelpFormatter."""

    def __init__(self, *args, formatter_class=HelpFormatter, **kwargs):
        super().__init__(*args, formatter_class=formatter_class, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    from ...version import __version__

    parser = _Parser(
        prog="codeinfer",
        description="Fast inference for small code models (GPT-Neo / PyCodeGPT, CodeGen, "
                    "diff-codegen, CodeCLM): generate, serve, bench, convert, edit, eval.")
    parser.add_argument("--version", action="version", version=f"codeinfer {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except ValueError as e:  # bad input (a bad checkpoint folder included): one line, no traceback
        message = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"codeinfer {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
