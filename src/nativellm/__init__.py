"""nativellm: a native build-and-run manager for llama.cpp with systemd integration."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("nativellm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
