"""The typer app, its shared state and options, and the entry point that maps errors to exit codes."""

from __future__ import annotations

import errno
import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Annotated

import typer
from rich.markup import escape

from nativellm import __version__
from nativellm.cli.output import emit_json, err, error_envelope, out
from nativellm.errors import Interrupted, NativeLLMError, ResourceError, UsageError
from nativellm.paths import Scope

app = typer.Typer(
    name="nativellm",
    help="Build llama.cpp natively for this machine and run llama-server under systemd.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
builds_app = typer.Typer(help="List, switch, roll back and clean up installed builds.", no_args_is_help=True)
app.add_typer(builds_app, name="builds")


@dataclass
class CliState:
    """What the error handler needs to know about the running command."""

    debug: bool = False
    json: bool = False
    command: str = ""


STATE = CliState()

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SystemOpt = Annotated[bool, typer.Option("--system", help="System scope (/var/lib/nativellm); needs root.")]


def _begin(command: str, json_out: bool) -> None:
    STATE.command = command
    STATE.json = json_out


def _scope(system: bool) -> Scope:
    return Scope.SYSTEM if system else Scope.USER


def _gpu_indices(gpus: str | None) -> tuple[int, ...] | None:
    """`--gpus 0,1` -> (0, 1); None when the option was not given."""
    if gpus is None:
        return None
    try:
        return tuple(int(g) for g in gpus.split(",") if g.strip())
    except ValueError:
        raise UsageError(f"--gpus {gpus!r} is not a list of GPU indices", "use e.g. --gpus 0,1") from None


def _version(value: bool) -> None:
    if value:
        out.print(f"nativellm {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Verbose logs and full tracebacks on errors.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    STATE.debug = debug
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


# --------------------------------------------------------------------------- entry point
def _exception_classes(name: str) -> tuple[type[BaseException], ...]:
    """`name` from click and from the click that typer vendors (typer >= 0.26 raises its own copy)."""
    found: list[type[BaseException]] = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer.exceptions"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and issubclass(cls, BaseException) and cls not in found:
            found.append(cls)
    return tuple(found)


_CLICK_ERRORS = _exception_classes("ClickException")
_EXIT = _exception_classes("Exit")
_INTERRUPT: tuple[type[BaseException], ...] = (KeyboardInterrupt, *_exception_classes("Abort"))


def _command_name(ctx: object) -> str:
    """ "builds use" from click's context chain (the program's own name, which is three words under
    `python -m nativellm`, left out)."""
    names: list[str] = []
    while ctx is not None and getattr(ctx, "parent", None) is not None:
        names.append(str(getattr(ctx, "info_name", "")))
        ctx = getattr(ctx, "parent", None)
    return " ".join(reversed(names))


def _usage_error(exc: BaseException) -> NativeLLMError:
    """A parse error (unknown option, missing argument, bad value, range) as one line and a hint."""
    message = str(getattr(exc, "format_message", lambda: str(exc))()).strip().splitlines()
    ctx = getattr(exc, "ctx", None)
    where = getattr(ctx, "command_path", None) or "nativellm"
    error: NativeLLMError = UsageError(message[0] if message else "invalid usage", f"see `{where} --help`")
    if getattr(exc, "exit_code", 2) != 2:  # a ClickException that is not a usage error (file errors...)
        error = NativeLLMError(error.message, error.hint)
        error.exit_code = int(getattr(exc, "exit_code", 1))
    return error


def _check_utf8(args: list[str]) -> None:
    """Arguments that are not UTF-8 reach Python as lone surrogates (surrogateescape): refuse them
    up front, naming the argument, instead of failing later wherever one is printed or encoded."""
    for arg in args:
        try:
            arg.encode("utf-8")
        except UnicodeEncodeError:
            shown = arg.encode("utf-8", "surrogateescape").decode("ascii", "backslashreplace")
            raise UsageError(
                f"argument '{shown}' is not valid UTF-8", "pass names, paths and values as UTF-8 text"
            ) from None


# OSError numbers that mean "this machine refused the file operation", not a bug: a read-only or
# full file system, or a path this user may not change. errno -> hint.
_RESOURCE_ERRNOS = {
    errno.EROFS: "the file system is mounted read-only: remount it read-write or point NATIVELLM_HOME elsewhere",
    errno.EACCES: "this user may not change it: fix its permissions, or run as its owner (--system needs root)",
    errno.EPERM: "this user may not change it: fix its permissions, or run as its owner (--system needs root)",
    errno.ENOSPC: "the disk is full: free space (`nativellm builds gc`, `nativellm model rm`) and retry",
    errno.EDQUOT: "the disk quota is used up: free space and retry",
}


def resource_error(exc: OSError) -> NativeLLMError | None:
    """The ResourceError (exit 12) for a file operation the system refused, naming the path."""
    hint = _RESOURCE_ERRNOS.get(exc.errno or 0)
    if hint is None:
        return None
    where = exc.filename if exc.filename is not None else "a file"
    return ResourceError(f"cannot change {where}: {exc.strerror}", hint)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every NativeLLMError becomes one line plus a hint and its exit code."""
    try:
        _check_utf8(sys.argv[1:] if argv is None else argv)
        rv = app(args=argv, standalone_mode=False)
    except NativeLLMError as exc:
        _fail(exc)
    except OSError as exc:
        mapped = resource_error(exc)
        if mapped is None or STATE.debug:
            _internal(exc)
        else:
            _fail(mapped)
    except _INTERRUPT:
        _fail(Interrupted("interrupted; nothing was changed", "run the command again"))
    except _EXIT as exc:
        sys.exit(getattr(exc, "exit_code", 0))
    except _CLICK_ERRORS as exc:
        args = sys.argv[1:] if argv is None else argv
        if "--json" in args:  # the command never began: say which one, as an error envelope
            STATE.json = True
            STATE.command = _command_name(getattr(exc, "ctx", None))
        _fail(_usage_error(exc))
    except Exception as exc:
        _internal(exc)
    if rv == Interrupted.exit_code:  # typer turns Ctrl-C into a silent "return 130"; commands return None
        _fail(Interrupted("interrupted; nothing was changed", "run the command again"))
    sys.exit(rv if isinstance(rv, int) else 0)


def _internal(exc: BaseException) -> None:
    if STATE.debug:
        raise exc
    err.print(f"[red]error:[/red] internal error: {type(exc).__name__}: {escape(_printable(str(exc)))}")
    err.print("  hint: rerun with --debug and report the traceback")
    sys.exit(1)


def _printable(text: str) -> str:
    """One line that any terminal encoding takes: line breaks escaped, undecodable bytes shown as \\x.."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return text.replace("\r", "\\r").replace("\n", "\\n")


def _fail(exc: NativeLLMError) -> None:
    if STATE.debug:
        import traceback

        traceback.print_exc()
    if STATE.json:
        emit_json(error_envelope(STATE.command, exc))
    err.print(f"[red]error:[/red] {escape(_printable(exc.message))}")
    if exc.hint:
        err.print(f"  hint: {escape(_printable(exc.hint))}")
    sys.exit(exc.exit_code)
