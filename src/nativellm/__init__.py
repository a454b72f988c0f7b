"""nativellm: a native build-and-run manager for llama.cpp with systemd integration."""

__version__ = "0.1.0"
