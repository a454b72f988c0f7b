"""Router instances without a server: the spec's checks, the preset INI and unit rendering (golden),
refusals before any write, and the load/unload/swap rules against a scripted router API."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from ggufs import write_gguf

from nativellm.client import ModelState, parse_models
from nativellm.errors import InstanceError, ModelError, NotFoundError, UsageError
from nativellm.models.registry import add_model
from nativellm.paths import Paths
from nativellm.serve.instances import InstanceOptions, Instances
from nativellm.serve.router import (
    PRESET_NAME,
    RouterOps,
    check_router,
    fit_settings,
    render_preset,
    router_argv,
)
from nativellm.serve.router_fit import load_fit_check, router_fit
from nativellm.serve.server_flags import ServerFlags, parse_server_help
from nativellm.specs import InstanceSpec
from tests.unit.test_instances import _profile, make_paths

FIXTURES = Path(__file__).parents[1] / "fixtures"
OLD = parse_server_help((FIXTURES / "llama_server" / "help-2024-11-74d73dc.txt").read_text())
NEW = parse_server_help((FIXTURES / "llama_server" / "help-b11312.txt").read_text())
UPDATE = bool(os.environ.get("NATIVELLM_UPDATE_GOLDEN"))


@pytest.fixture()
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    p = make_paths(tmp_path, monkeypatch)
    for name, layers in (("q4", 2), ("q8", 4), ("chat", 3)):
        add_model(p, write_gguf(tmp_path / "models" / f"{name}.gguf", n_layer=layers), name=name)
    return p


def _instances(paths: Paths, flags: ServerFlags = NEW) -> Instances:
    return Instances(
        paths, None, profile=_profile, port_in_use=lambda p, h: False, server_flags=lambda b: flags
    )


def _router_opts(**kw: object) -> InstanceOptions:
    base: dict[str, object] = {"models": ("q4", "q8", "chat"), "models_max": 2, "load_on_start": ("chat",)}
    return InstanceOptions(**(base | kw))  # type: ignore[arg-type]


def _snapshot(paths: Paths) -> dict[str, bytes]:
    root = paths.home.parents[1]
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _golden(name: str, text: str, paths: Paths) -> None:
    root = str(paths.home.parents[1])
    text = text.replace(root, "/ROOT").replace(os.path.realpath(sys.executable), "/PYTHON")
    golden = FIXTURES / "units" / name
    if UPDATE:
        golden.write_text(text)
    assert text == golden.read_text()


# -- spec ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "error", "words"),
    [
        ({"models": ()}, UsageError, "needs --models"),
        ({"models": ("a", "a")}, UsageError, "twice"),
        ({"model": "x"}, UsageError, "serves --models, not --model"),
        ({"models_max": 1, "load_on_start": ("a", "b")}, UsageError, "--models-max 1 is smaller than the 2"),
        ({"load_on_start": ("zz",)}, UsageError, "zz is not one of this router's models"),
        ({"model_settings": {"a": {"Ctx Size": "1"}}}, UsageError, "not a llama-server option name"),
        ({"models_max": -1}, UsageError, "0 (no limit) or more"),
    ],
)
def test_router_spec_is_checked(kw: dict[str, object], error: type[Exception], words: str) -> None:
    base: dict[str, object] = {"name": "r", "model": "", "port": 8080, "models": ("a", "b")}
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        InstanceSpec(**(base | kw)).validate()  # type: ignore[arg-type]


def test_router_spec_round_trips_through_toml() -> None:
    spec = InstanceSpec(
        name="r", model="", port=8080, models=("a", "b"), models_max=1, load_on_start=("a",),
        warmup=False, model_settings={"b": {"ctx-size": "8192"}},
    ).validate()  # fmt: skip
    assert InstanceSpec.from_toml(spec.to_toml()) == spec
    assert spec.is_router and spec.model_label == "router: a, b"


# -- rendering -------------------------------------------------------------------------------
def test_add_renders_the_preset_and_the_router_unit_golden(paths: Paths) -> None:
    out = _instances(paths).add(
        "multi",
        _router_opts(ctx=2048, model_settings={"q8": {"ctx-size": "8192", "n-gpu-layers": "0"}}),
    )
    assert out.changed and out.spec is not None and out.spec.model == ""
    dropin_dir = paths.units / "llama@multi.service.d"
    preset = (dropin_dir / PRESET_NAME).read_text()
    _golden("router-multi.ini", preset, paths)
    _golden("router-multi.conf", (dropin_dir / "50-nativellm.conf").read_text(), paths)
    # Per-model settings override the instance's (they sit in the model's own section, after [*]).
    assert "[*]\nctx-size = 2048" in preset and "[q8]" in preset and "ctx-size = 8192" in preset
    assert "load-on-startup = true" in preset.split("[chat]")[1]
    unit = (dropin_dir / "50-nativellm.conf").read_text()
    assert f"--models-preset {dropin_dir / PRESET_NAME}" in unit and "--models-max 2" in unit
    assert "--model " not in unit and "--ctx-size" not in unit  # all per model, in the preset
    assert "--models chat --warmup" in unit and "LLAMA_CACHE=/nonexistent/nativellm-router-cache" in unit


def test_edit_rerenders_the_preset_and_merges_model_settings(paths: Paths) -> None:
    inst = _instances(paths)
    inst.add("multi", _router_opts(model_settings={"q8": {"ctx-size": "8192", "threads": "2"}}))
    preset = paths.units / "llama@multi.service.d" / PRESET_NAME
    out = inst.edit(
        "multi", InstanceOptions(model_settings={"q8": {"threads": ""}, "q4": {"ctx-size": "1024"}})
    )
    assert out.changed and out.spec is not None
    assert dict(out.spec.model_settings) == {"q8": {"ctx-size": "8192"}, "q4": {"ctx-size": "1024"}}
    text = preset.read_text()
    assert "threads = 2" not in text and "ctx-size = 1024" in text.split("[q4]")[1].split("[")[0]


def test_remove_takes_the_preset_with_it(paths: Paths) -> None:
    inst = _instances(paths)
    before = set(_snapshot(paths))
    inst.add("multi", _router_opts())
    inst.remove("multi")
    after = set(_snapshot(paths))
    assert not any(PRESET_NAME in f or "multi" in f for f in after - before)


@pytest.mark.parametrize(
    ("opts", "flags", "error", "words"),
    [
        (_router_opts(), OLD, InstanceError, "has no router mode"),
        (_router_opts(model_settings={"q4": {"no-such-option": "1"}}), NEW, InstanceError, "has no option --no-such-option"),
        (_router_opts(model_settings={"q4": {"port": "9"}}), NEW, InstanceError, "managed by the router"),
        (_router_opts(model_settings={"q4": {"ctx-size": "big"}}), NEW, UsageError, "is not a number"),
        (_router_opts(models=("q4", "nope"), load_on_start=None), NEW, NotFoundError, "no model named 'nope'"),
        (_router_opts(models_max=1, load_on_start=("q4", "q8")), NEW, UsageError, "smaller than the 2"),
    ],
)  # fmt: skip
def test_bad_router_input_is_refused_before_any_write(
    paths: Paths, opts: InstanceOptions, flags: ServerFlags, error: type[Exception], words: str
) -> None:
    before = _snapshot(paths)
    with pytest.raises(error, match=words) as info:
        _instances(paths, flags).add("multi", opts)
    assert info.value.hint  # type: ignore[attr-defined]
    assert _snapshot(paths) == before


def test_old_build_refusal_names_the_fix(paths: Paths) -> None:
    with pytest.raises(InstanceError) as info:
        _instances(paths, OLD).add("multi", _router_opts())
    assert "newer llama.cpp" in info.value.hint and info.value.exit_code == 10


def test_router_argv_keeps_model_settings_off_the_command_line() -> None:
    spec = InstanceSpec(name="r", model="", port=9, models=("a", "b"), ctx=4096, threads=3).validate()
    argv = router_argv(spec, Path("/b/llama-server"), Path("/u/p.ini"), api_key_path="/k")
    assert argv == ["/b/llama-server", "--models-preset", "/u/p.ini", "--host", "127.0.0.1", "--port", "9",
                    "--models-max", "2", "--api-key-file", "/k"]  # fmt: skip
    text = render_preset(spec, {"a": Path("/m/a.gguf"), "b": Path("/m/b b.gguf")}, NEW)
    assert "model = /m/b b.gguf" in text and "threads = 3" in text and "ctx-size = 4096" in text


def test_preset_refuses_a_value_its_ini_grammar_would_cut() -> None:
    spec = InstanceSpec(
        name="r", model="", port=9, models=("a",), model_settings={"a": {"chat-template": "x ;y"}}
    )
    with pytest.raises(UsageError, match="preset file"):
        render_preset(spec.validate(), {"a": Path("/m/a.gguf")}, NEW)


def test_check_router_accepts_preset_only_keys() -> None:
    spec = InstanceSpec(
        name="r", model="", port=9, models=("a",), model_settings={"a": {"stop-timeout": "5"}}
    )
    check_router(spec.validate(), Path("/b"), NEW)


# -- fit -------------------------------------------------------------------------------------
def test_fit_settings_take_the_models_own_over_the_instances() -> None:
    spec = InstanceSpec(name="r", model="", port=9, models=("a", "b"), ctx=2048, gpu_layers=10,
                        model_settings={"b": {"ctx-size": "8192", "cache-type-k": "q8_0"}})  # fmt: skip
    assert fit_settings(spec, "a").ctx == 2048 and fit_settings(spec, "a").gpu_layers == 10
    b = fit_settings(spec, "b")
    assert (b.ctx, b.gpu_layers, b.cache_type_k, b.cache_type_v) == (8192, 10, "q8_0", "f16")


def test_router_fit_sums_models_max_models(paths: Paths) -> None:
    spec = InstanceSpec(
        name="r", model="", port=9, models=("q4", "q8", "chat"), models_max=2, ctx=512
    ).validate()
    assert router_fit(paths, spec, _profile(), force=False) is None  # kilobyte models in 32 GiB
    tiny = dataclasses.replace(_profile(), memory_bytes=1 << 20)
    with pytest.raises(ModelError, match=r"router r: .*does not fit") as info:
        router_fit(paths, spec, tiny, force=False)
    assert info.value.exit_code == 9 and "--models-max" in info.value.hint
    assert "does not fit" in (router_fit(paths, spec, tiny, force=True) or "")


# -- load / unload / swap against a scripted router ------------------------------------------------
class ScriptedRouter:
    """Stands in for RouterClient: a router whose models change state as the real one's do."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = dict(states)
        self.sent: list[tuple[str, str]] = []

    def models(self) -> dict[str, ModelState]:
        return {m: ModelState(m, s) for m, s in self.states.items()}

    def load(self, model: str) -> None:
        self.sent.append(("load", model))
        self.states[model] = "loaded"

    def unload(self, model: str) -> None:
        self.sent.append(("unload", model))
        self.states[model] = "unloaded"

    def wait_for(self, model: str, want: tuple[str, ...], timeout: float) -> ModelState:
        assert self.states[model] in want
        return ModelState(model, self.states[model])

    def warmup(self, model: str) -> float:
        self.sent.append(("warmup", model))
        return 0.01


SPEC = InstanceSpec(name="multi", model="", port=9, models=("q4", "q8", "chat"))


def _ops(
    router: ScriptedRouter, fit: Callable[[InstanceSpec, str, str | None], str | None] | None = None
) -> RouterOps:
    return RouterOps(SPEC, fit_check=fit or (lambda s, m, f: None), client=router)  # type: ignore[arg-type]


def test_load_unload_swap_send_what_they_should() -> None:
    r = ScriptedRouter({"q4": "loaded", "q8": "unloaded", "chat": "unloaded"})
    res = _ops(r).load("q8")
    assert r.sent == [("load", "q8"), ("warmup", "q8")] and res.warmup_seconds == 0.01
    r.sent.clear()
    res = _ops(r).swap("q4", "chat", warmup=False)
    assert r.sent == [("load", "chat"), ("unload", "q4")]  # room for both: no gap in service
    assert res.overlap is True and res.to_dict()["overlap"] is True
    assert r.states == {"q4": "unloaded", "q8": "loaded", "chat": "loaded"}
    r.sent.clear()
    res = _ops(r).unload("q8")
    assert r.sent == [("unload", "q8")] and {m.name: m.state for m in res.models}["q8"] == "unloaded"


@pytest.mark.parametrize(
    ("spec", "fit_raises", "first"),
    [
        (dataclasses.replace(SPEC, models_max=2), False, ("unload", "q4")),  # no free slot: make room first
        (SPEC, True, ("unload", "q4")),  # doesn't fit next to q4: make room first
        (dataclasses.replace(SPEC, models_max=3), False, ("load", "chat")),
    ],
)
def test_swap_unloads_first_only_when_it_must(
    spec: InstanceSpec, fit_raises: bool, first: tuple[str, str]
) -> None:
    r = ScriptedRouter({"q4": "loaded", "q8": "loaded", "chat": "unloaded"})

    def fit(s: InstanceSpec, model: str, freed: str | None) -> str | None:
        if fit_raises and freed is None:
            raise ModelError("too big", "unload something")
        return None

    RouterOps(spec, fit_check=fit, client=r).swap("q4", "chat", warmup=False)  # type: ignore[arg-type]
    assert r.sent[0] == first and set(r.sent) == {("unload", "q4"), ("load", "chat")}


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        (lambda o: o.load("nope"), NotFoundError, "not one of router multi's models"),
        (lambda o: o.load("q4"), InstanceError, "q4 is already loaded"),
        (lambda o: o.unload("q8"), InstanceError, "q8 is not loaded"),
        (lambda o: o.swap("q8", "chat"), InstanceError, "q8 is not loaded"),
        (lambda o: o.swap("q4", "q4"), UsageError, "two different models"),
    ],
)
def test_lifecycle_bad_input_sends_nothing(
    call: Callable[[RouterOps], object], error: type[Exception], words: str
) -> None:
    r = ScriptedRouter({"q4": "loaded", "q8": "unloaded", "chat": "unloaded"})
    with pytest.raises(error, match=words):
        call(_ops(r))
    assert r.sent == []


def test_a_load_that_does_not_fit_is_refused_before_it_is_sent(paths: Paths) -> None:
    spec = InstanceSpec(name="multi", model="", port=9, models=("q4", "q8", "chat"), ctx=512).validate()
    check = load_fit_check(paths, _profile, available=lambda: 4096)
    r = ScriptedRouter({"q4": "loaded", "q8": "unloaded", "chat": "unloaded"})
    ops = RouterOps(spec, fit_check=check, client=r)  # type: ignore[arg-type]
    with pytest.raises(
        ModelError, match=r"loading q8 on multi needs about .* GiB of RAM, but 0.00 GiB"
    ) as info:
        ops.load("q8")
    assert "nothing was sent" in info.value.message and "--force" in info.value.hint
    assert r.sent == []
    ops.load("q8", force=True)  # --force sends it anyway
    assert r.sent[0] == ("load", "q8")


def test_single_model_instances_have_no_router_ops() -> None:
    with pytest.raises(UsageError, match="serves one model"):
        RouterOps(InstanceSpec(name="q4", model="m", port=9), fit_check=lambda s, m, f: None)


def test_parse_models_reads_the_routers_states() -> None:
    doc = json.loads(
        '{"data": [{"id": "a", "status": {"value": "loaded", "args": ["x"]}},'
        ' {"id": "b", "status": {"value": "unloaded", "failed": true, "exit_code": 1}},'
        ' {"id": "c", "status": {"value": "sleeping"}}], "object": "list"}'
    )
    got = parse_models(doc)
    assert [(m.name, m.state, m.exit_code) for m in got.values()] == [
        ("a", "loaded", None),
        ("b", "failed", 1),
        ("c", "sleeping", None),
    ]


# -- the unit's readiness for a router (healthcheck ready --models), against a loopback stand-in ------
def _fake_router(states: dict[str, str]) -> tuple[str, list[tuple[str, str, str]], Callable[[], None]]:
    import http.server
    import threading

    seen: list[tuple[str, str, str]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self, code: int, doc: object) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            seen.append(("GET", self.path, self.headers.get("Authorization", "")))
            if self.path == "/models":
                self._answer(200, {"data": [{"id": m, "status": {"value": s}} for m, s in states.items()]})
            else:
                self._answer(200, {"status": "ok"})

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            seen.append(("POST", self.path, self.headers.get("Authorization", "")))
            self._answer(200, {"choices": []})

        def log_message(self, *args: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()

    def stop() -> None:
        srv.shutdown()
        srv.server_close()

    return f"http://127.0.0.1:{srv.server_address[1]}", seen, stop


def test_router_readiness_waits_for_its_models_and_warms_them_up_with_the_key(tmp_path: Path) -> None:
    from nativellm.serve import healthcheck

    base, seen, stop = _fake_router({"chat": "loaded", "q4": "unloaded"})
    key = tmp_path / "key"
    key.write_text("s3cret\n")
    try:
        rc = healthcheck.main(["ready", "--url", f"{base}/health", "--timeout", "10", "--models", "chat",
                               "--warmup", "--api-key-file", str(key)])  # fmt: skip
    finally:
        stop()
    assert rc == 0
    assert ("GET", "/models", "Bearer s3cret") in seen and (
        "POST",
        "/v1/completions",
        "Bearer s3cret",
    ) in seen


def test_router_readiness_with_an_unreadable_key_file_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from nativellm.serve import healthcheck

    base, seen, stop = _fake_router({"chat": "loaded"})
    try:
        rc = healthcheck.main(["ready", "--url", f"{base}/health", "--timeout", "10", "--models", "chat",
                               "--api-key-file", str(tmp_path / "missing")])  # fmt: skip
    finally:
        stop()
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"cannot read the API key file {tmp_path / 'missing'}: No such file or directory"]
    assert not any(method == "POST" for method, _, _ in seen)
