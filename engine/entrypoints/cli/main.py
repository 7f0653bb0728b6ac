"""The `codeinfer` console script: one parser, a subcommand per module in engine/entrypoints/cli/."""
from __future__ import annotations

import argparse
import importlib
import sys

# Each name is a module engine/entrypoints/cli/<name>.py with register(subparsers).
COMMANDS = ("generate", "serve", "bench", "convert", "edit", "eval")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="codeinfer",
        description="Fast inference for small code models (GPT-Neo / PyCodeGPT, CodeGen, "
                    "diff-codegen, CodeCLM): generate, serve, bench, convert, edit, eval.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"engine.entrypoints.cli.{name}").register(subparsers)
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
