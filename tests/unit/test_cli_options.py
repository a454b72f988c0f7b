"""Option parsing shared by the CLI's commands."""

from __future__ import annotations

import pytest

from nativellm.cli.app import _gpu_indices
from nativellm.errors import UsageError


def test_gpu_indices_parse_and_reject_with_a_hint() -> None:
    assert _gpu_indices(None) is None
    assert _gpu_indices("0, 1,") == (0, 1)
    with pytest.raises(UsageError) as exc:
        _gpu_indices("0,a")
    assert "--gpus '0,a' is not a list of GPU indices" in exc.value.message and "--gpus 0,1" in exc.value.hint


def _leaf_commands() -> dict[str, set[str]]:
    """Every runnable command ("builds list", "model add", ...) and its option names."""
    import typer.main

    from nativellm.cli.app import app

    found: dict[str, set[str]] = {}

    def walk(cmd: object, path: list[str]) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, [*path, name])
        else:
            found[" ".join(path)] = {o for p in getattr(cmd, "params", []) for o in getattr(p, "opts", [])}

    walk(typer.main.get_command(app), [])
    return found


def test_the_readme_names_the_commands_without_json_or_system() -> None:
    """README: every command but `logs` and `run` takes --json; all but five take --system."""
    from pathlib import Path

    commands = _leaf_commands()
    assert len(commands) > 30
    no_json = sorted(c for c, opts in commands.items() if "--json" not in opts)
    no_system = sorted(c for c, opts in commands.items() if "--system" not in opts)
    assert no_json == ["logs", "run"]
    assert no_system == ["artifacts index", "artifacts keygen", "detect", "fingerprint", "plan"]
    readme = " ".join((Path(__file__).parents[2] / "README.md").read_text().split())
    assert (
        "Every command but `logs` and `run` (which stream llama-server's own output) takes `--json`" in readme
    )
    assert "all but `detect`, `plan`, `fingerprint`, `artifacts index` and `artifacts keygen`" in readme
