"""The command line: the only package that imports typer (ruff's banned-api rule enforces it).

One module per command group keeps each small; importing them registers their commands on `app`.
Every command parses its options, calls one use-case function and renders the result.
"""

from nativellm.cli import (  # noqa: F401
    bench_cmds,
    build_cmds,
    fleet_cmds,
    instance_cmds,
    mlx_cmds,
    model_cmds,
)
from nativellm.cli.app import app, main

__all__ = ["app", "main"]
