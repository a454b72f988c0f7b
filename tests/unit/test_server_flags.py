"""The argv is rendered, and a completion judged, for the llama-server at hand: real `--help` and
/v1/completions answers of the oldest vintage (llama.cpp 74d73dc, 2024-11, llama-cpp-python 0.3.2)
and of the newest (b11312, 0.3.36)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from nativellm.client import completion_answer_problem
from nativellm.errors import InstanceError
from nativellm.serve.dropins import server_argv
from nativellm.serve.server_flags import ServerFlags, parse_server_help
from nativellm.specs import InstanceSpec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "llama_server"
OLD = parse_server_help((FIXTURES / "help-2024-11-74d73dc.txt").read_text())
NEW = parse_server_help((FIXTURES / "help-b11312.txt").read_text())
SPEC = InstanceSpec(name="q4", model="m", port=8080, ctx=1024, threads=2, metrics=False)


def _argv(spec: InstanceSpec, flags: ServerFlags) -> list[str]:
    return server_argv(spec, Path("/b/llama-server"), Path("/m.gguf"), api_key_path=None, flags=flags)


def test_help_parsing_reads_every_option_line() -> None:
    for flags in (OLD, NEW):
        assert {"--model", "--alias", "--ctx-size", "--threads", "--n-gpu-layers", "-ngl", "--metrics",
                "--api-key-file", "--cache-type-k", "--flash-attn", "-fa", "--help"} <= flags.known  # fmt: skip
        assert not any(f.endswith(",") or "|" in f for f in flags.known)
    assert "--no-webui" in NEW.known and "--no-webui" not in OLD.known
    assert "--cache-type-k-draft" in NEW.known  # listed after an alias on its line
    assert "--rpc" not in OLD.known  # that CPU build had no RPC backend


def test_flash_attn_took_no_value_before_2025() -> None:
    assert OLD.flash_attn_takes_value is False and NEW.flash_attn_takes_value is True
    spec = replace(SPEC, flash_attn="on")
    assert _argv(spec, NEW)[-2:] == ["--flash-attn", "on"]
    assert _argv(spec, OLD)[-1] == "--flash-attn" and "on" not in _argv(spec, OLD)
    for mode in ("off", "auto"):  # off was the old default, and it had no auto
        assert "--flash-attn" not in _argv(replace(SPEC, flash_attn=mode), OLD)
        assert _argv(replace(SPEC, flash_attn=mode), NEW)[-2:] == ["--flash-attn", mode]


def test_mlock_spelling_follows_the_server() -> None:
    spec = replace(SPEC, mlock=True)
    assert OLD.mlock_args == ("--mlock",) and "--mlock" in _argv(spec, OLD)
    assert NEW.mlock_args == ("--load-mode", "mmap+mlock")
    assert _argv(spec, NEW)[-2:] == ["--load-mode", "mmap+mlock"] and "--mlock" not in _argv(spec, NEW)


def test_default_instance_renders_the_same_flags_for_both_vintages() -> None:
    spec = replace(SPEC, metrics=True)
    assert _argv(spec, OLD) == _argv(spec, NEW) == _argv(spec, ServerFlags())
    assert "--metrics" in _argv(spec, OLD)


def test_unknown_server_means_todays_spelling() -> None:
    assert parse_server_help("") == ServerFlags()
    spec = replace(SPEC, flash_attn="auto", mlock=True, rpc=("10.0.0.5:50052",))
    assert _argv(spec, ServerFlags())[-5:] == ["--flash-attn", "auto", "--mlock", "--rpc", "10.0.0.5:50052"]


def test_a_flag_the_old_server_lacks_is_an_error_before_any_unit_is_written() -> None:
    spec = replace(SPEC, rpc=("10.0.0.5:50052",))
    assert "--rpc" in _argv(spec, NEW)
    with pytest.raises(InstanceError) as err:
        _argv(spec, OLD)
    assert "--rpc" in err.value.message and "instance edit q4" in (err.value.hint or "")
    # Only what nativellm renders is checked: extra args are the user's own business.
    assert _argv(replace(SPEC, extra_args=("--no-such-flag",)), OLD)[-1] == "--no-such-flag"
    # A setting that only feeds `status` is left out rather than failing the instance.
    assert "--metrics" not in _argv(
        replace(SPEC, metrics=True), ServerFlags(OLD.known - {"--metrics"}, False)
    )


def test_a_completion_answer_of_either_vintage_counts() -> None:
    """/v1/completions of the 2024 server answers in /completion's own shape (no `choices`): the
    upgrade's completion check must accept it, or every rollback onto an old tag "fails"."""
    old = json.loads((FIXTURES / "v1-completions-2024-11-74d73dc.json").read_text())
    new = json.loads((FIXTURES / "v1-completions-b11312.json").read_text())
    assert "choices" not in old and old["tokens_predicted"] == 4
    assert completion_answer_problem(old) is None and completion_answer_problem(new) is None
    assert completion_answer_problem({**new, "choices": []}) == "the completion returned no choices"
    assert completion_answer_problem({**old, "tokens_predicted": 0}) == "the completion returned no tokens"
    assert completion_answer_problem({"error": "x"}) is not None
    assert completion_answer_problem([]) is not None
