"""Subcommands of the `codeinfer` CLI: each module has register(subparsers) setting func=run."""
