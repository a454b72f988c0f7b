"""The command line: the only package that imports typer (ruff's banned-api rule enforces it).

One module per command group keeps each small; importing them registers their commands on `app`.
Every command parses its options, calls one use-case function and renders the result.
"""

import nativellm.cli.mlx_cmds  # noqa: F401  (the MLX runtime, issue 17)
from nativellm.cli import bench_cmds, build_cmds, fleet_cmds, instance_cmds, model_cmds, router_cmds  # noqa: F401
from nativellm.cli.app import app, main

__all__ = ["app", "main"]
