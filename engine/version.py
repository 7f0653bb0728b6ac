"""The installed package's version (pyproject.toml's, read from the package metadata)."""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("codeinfer")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "unknown"
