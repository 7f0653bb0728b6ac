"""The `codeinfer` console script: main.py parses, one module per subcommand."""
