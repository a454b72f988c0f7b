"""The MLX engine without processes: model-directory validation, the engine decision, the
mlx_lm.server unit, the runtime store (current/rollback) and the instance use cases' refusals."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from ggufs import write_gguf
from mlxdirs import tensors, write_mlx_dir, write_safetensors

from nativellm.errors import ModelError, NotFoundError, StoreError, UsageError
from nativellm.hardware.profile import load_profile
from nativellm.mlx import runtime as rt
from nativellm.mlx.engine import Engine, decide_engine, mlx_argv
from nativellm.models.mlx import read_safetensors_header, validate_mlx_dir, verify_mlx
from nativellm.models.mlx_store import add_mlx_model
from nativellm.models.registry import ModelRegistry, add_model
from nativellm.paths import Paths, Scope
from nativellm.serve.dropins import Resolved, render_dropin
from nativellm.serve.instances import InstanceOptions, Instances
from nativellm.specs import InstanceSpec
from tests.unit.test_instances import _profile, _snapshot, _today, make_paths

PROFILES = Path(__file__).parents[1] / "fixtures" / "profiles"


# -- validation of MLX model directories ------------------------------------------------------
def test_a_valid_directory_gives_its_facts(tmp_path: Path) -> None:
    facts = validate_mlx_dir(write_mlx_dir(tmp_path / "m"))
    assert facts["format"] == "mlx" and facts["architecture"] == "llama"
    assert (facts["vocab_size"], facts["block_count"], facts["embedding_length"]) == (40, 2, 16)
    assert facts["tokenizer_tokens"] == 40 and facts["has_chat_template"] is True
    assert facts["parameters"] == sum(int(a.size) for a in tensors().values())
    assert facts["file_type"] == "F16"


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").unlink(), "has no weights"),
        (lambda d: (d / "config.json").write_text("{not json"), "config .*config.json is not valid JSON"),
        (lambda d: _config(d, vocab_size=50), "vocab_size 50, but model.embed_tokens.weight has 40 rows"),
        (lambda d: _config(d, hidden_size=32), "hidden_size 32, but model.embed_tokens.weight is 16 wide"),
        (lambda d: _config(d, num_hidden_layers=3), "num_hidden_layers 3, but the weights hold 2 layers"),
        (lambda d: _config(d, model_type=None), "has no model_type"),
        (lambda d: _config(d, vocab_size="40"), "has no valid vocab_size"),
        (lambda d: (d / "tokenizer.json").unlink(), "has no tokenizer"),
        (lambda d: _truncate(d / "model.safetensors", 100), "is truncated"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\xff" * 16), "header length .* beyond the file"),
    ],
)
def test_a_broken_directory_is_refused(tmp_path: Path, damage: object, message: str) -> None:
    d = write_mlx_dir(tmp_path / "m")
    damage(d)  # type: ignore[operator]
    with pytest.raises(ModelError, match=message) as exc:
        validate_mlx_dir(d)
    assert exc.value.hint


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="the tokenizer has 41 tokens, more than vocab_size 40"):
        validate_mlx_dir(write_mlx_dir(tmp_path / "m", tokens=41))


def test_sharded_weights_need_every_shard(tmp_path: Path) -> None:
    d = write_mlx_dir(tmp_path / "m")
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    wmap = {"model.embed_tokens.weight": "model-00001-of-00002.safetensors",
            "lm_head.weight": "model-00002-of-00002.safetensors"}  # fmt: skip
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": wmap}))
    with pytest.raises(ModelError, match=r"missing weight file model-00002-of-00002.safetensors \(1 of 2"):
        validate_mlx_dir(d)
    write_safetensors(d / "model-00002-of-00002.safetensors", {})
    assert validate_mlx_dir(d)["tensor_count"] == len(tensors())


def test_a_header_whose_byte_range_does_not_match_its_shape_is_refused(tmp_path: Path) -> None:
    f = tmp_path / "w.safetensors"
    header = json.dumps({"w": {"dtype": "F16", "shape": [4, 4], "data_offsets": [0, 30]}}).encode()
    f.write_bytes(struct.pack("<Q", len(header)) + header + bytes(32))
    with pytest.raises(ModelError, match=r"shape \[4, 4\] \(F16\) needs 32 bytes, its header gives 30"):
        read_safetensors_header(f)


def _config(d: Path, **changes: object) -> None:
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(changes)
    (d / "config.json").write_text(json.dumps({k: v for k, v in cfg.items() if v is not None}))


def _truncate(path: Path, n: int) -> None:
    path.write_bytes(path.read_bytes()[:-n])


# -- the registry -------------------------------------------------------------------------------
def test_model_add_registers_a_directory_in_place_and_verify_sees_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_paths(tmp_path, monkeypatch)
    d = write_mlx_dir(tmp_path / "Tiny-MLX")
    rec, changed = add_mlx_model(paths, d)
    assert changed and rec.name == "tiny-mlx" and rec.path == d and rec.facts["format"] == "mlx"
    assert add_mlx_model(paths, d) == (rec, False)
    assert ModelRegistry(paths).get("tiny-mlx") == rec
    verify_mlx(rec)
    (d / "config.json").write_text((d / "config.json").read_text() + " ")
    with pytest.raises(ModelError, match="config.json has sha256 .* the file changed"):
        verify_mlx(rec)


def test_model_add_of_a_broken_directory_registers_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = make_paths(tmp_path, monkeypatch)
    d = write_mlx_dir(tmp_path / "m")
    (d / "model.safetensors").unlink()
    before = _snapshot(paths)
    with pytest.raises(ModelError, match="has no weights"):
        add_mlx_model(paths, d)
    assert _snapshot(paths) == before and ModelRegistry(paths).list() == []


# -- the engine decision (pure, on profiles) ---------------------------------------------------
def test_auto_picks_mlx_for_an_mlx_model_and_llama_for_a_gguf() -> None:
    linux = load_profile(PROFILES / "this-dev-vm.json")
    mac = load_profile(PROFILES / "apple-m2.json")
    assert decide_engine(Engine.AUTO, "mlx", linux, metal_build=False).engine is Engine.MLX
    assert decide_engine(Engine.AUTO, "mlx", mac, metal_build=True).engine is Engine.MLX
    assert decide_engine(Engine.AUTO, "gguf", linux, metal_build=False).engine is Engine.LLAMA
    assert decide_engine(Engine.AUTO, "gguf", mac, metal_build=True).engine is Engine.LLAMA
    no_metal = decide_engine(Engine.AUTO, "gguf", mac, metal_build=False)
    assert no_metal.engine is Engine.LLAMA and "without a working Metal build" in no_metal.reason
    assert "--engine mlx" in no_metal.reason


def test_an_engine_that_cannot_load_the_format_is_refused() -> None:
    with pytest.raises(ModelError, match="--engine mlx needs an MLX model directory") as exc:
        decide_engine(Engine.MLX, "gguf", None, metal_build=False)
    assert "--engine llama" in exc.value.hint
    with pytest.raises(ModelError, match="llama-server cannot load an MLX model directory") as exc:
        decide_engine(Engine.LLAMA, "mlx", None, metal_build=False)
    assert "--engine mlx" in exc.value.hint


# -- the spec and the unit ----------------------------------------------------------------------
def test_spec_engine_round_trip_and_llama_specs_unchanged() -> None:
    plain = InstanceSpec(name="q4", model="m", port=8080)
    assert "engine" not in plain.to_toml()
    mlx = InstanceSpec(name="q4", model="m", port=8080, engine="mlx").validate()
    assert InstanceSpec.from_toml(mlx.to_toml()) == mlx


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"gpu_layers": 99}, "--gpu-layers is a llama-server setting"),
        ({"ctx": 4096, "mlock": True}, "--ctx, --mlock are llama-server settings"),
        ({"host": "0.0.0.0", "insecure_no_api_key": True}, "mlx_lm.server has no API key"),
        ({"engine": "vllm"}, "engine 'vllm' is unknown"),
    ],
)
def test_mlx_specs_refuse_what_mlx_lm_server_cannot_do(change: dict[str, object], message: str) -> None:
    spec = InstanceSpec(**{"name": "q4", "model": "m", "port": 8080, "engine": "mlx", **change})  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=message):
        spec.validate()


def test_the_mlx_unit_runs_mlx_lm_server_in_the_alias_dir_with_the_mlx_readiness() -> None:
    spec = InstanceSpec(
        name="q4", model="tiny", port=8090, threads=4, engine="mlx", extra_args=("--temp", "0.5")
    )
    python = Path("/srv/h/runtimes/mlx/current/venv/bin/python")
    assert mlx_argv(spec, python, "q4") == [str(python), "-m", "mlx_lm", "server", "--model", "q4", "--host",
                                            "127.0.0.1", "--port", "8090", "--temp", "0.5"]  # fmt: skip
    r = Resolved(scope=Scope.USER, server_binary=python, model_path=Path("/m/tiny"), backend="cpu",
                 python="/usr/bin/python3", healthcheck=Path("/srv/h/hc.py"), systemctl="/usr/bin/systemctl",
                 spec_path=Path("/c/q4.toml"), workdir=Path("/srv/h/mlx/instances/q4"),
                 engine_env={"HF_HUB_OFFLINE": "1"})  # fmt: skip
    text = render_dropin(spec, r)
    assert f"ExecStart={python} -m mlx_lm server --model q4 --host 127.0.0.1 --port 8090 --temp 0.5\n" in text
    assert "Description=mlx_lm.server q4: model tiny\n" in text
    assert "WorkingDirectory=/srv/h/mlx/instances/q4\n" in text
    assert 'Environment="HF_HUB_OFFLINE=1"\n' in text
    assert "ready --url http://127.0.0.1:8090/health --timeout 900 --engine mlx\n" in text
    assert "--threads" not in text and "llama-server" not in text


# -- the runtime store --------------------------------------------------------------------------
def _fake_runtime(paths: Paths, rid: str, created: str, passed: bool = True) -> None:
    d = paths.home / "runtimes" / "mlx" / rid
    (d / "venv" / "bin").mkdir(parents=True)
    (d / "venv" / "bin" / "python").write_text("")
    (d / "manifest.json").write_text(
        json.dumps({"id": rid, "created": created, "smoke_test": {"passed": passed}})
    )


def test_runtime_ids_follow_the_pins_and_the_platform() -> None:
    assert rt.requirements("Linux") == ("mlx[cpu]==0.32.4", "mlx-lm==0.32.2")
    assert rt.requirements("Darwin", mlx_lm_version="0.32.1") == ("mlx==0.32.4", "mlx-lm==0.32.1")
    a = rt.runtime_id(rt.requirements("Linux"), "3.11", "x86_64")
    assert a.startswith("mlx0.32.4-lm0.32.2-py311-") and a == rt.runtime_id(
        rt.requirements("Linux"), "3.11", "x86_64"
    )
    assert a != rt.runtime_id(rt.requirements("Linux"), "3.12", "x86_64")
    assert a != rt.runtime_id(rt.requirements("Linux", mlx_lm_version="0.32.1"), "3.11", "x86_64")
    with pytest.raises(UsageError, match="--mlx-lm 'latest; rm' is not a version"):
        rt.requirements(mlx_lm_version="latest; rm")


def test_current_and_rollback_of_runtimes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_paths(tmp_path, monkeypatch)
    rts = rt.Runtimes(paths)
    with pytest.raises(StoreError, match="no earlier MLX runtime"):
        rts.rollback()
    _fake_runtime(paths, "a", "1")
    _fake_runtime(paths, "b", "2")
    _fake_runtime(paths, "bad", "3", passed=False)
    assert rts.set_current("a") and rts.set_current("b") and not rts.set_current("b")
    with pytest.raises(StoreError, match="did not pass its smoke test"):
        rts.set_current("bad")
    assert rts.current_id() == "b" and [r.id for r in rts.installed()] == ["a", "b", "bad"]
    assert rts.rollback().id == "a" and rts.current_id() == "a"
    (paths.home / "runtimes" / "mlx" / "b" / "venv" / "bin" / "python").unlink()
    with pytest.raises(StoreError, match="no earlier MLX runtime"):
        rts.rollback()  # b lost its Python: not a place to go back to
    assert rts.current_id() == "a"
    assert rts.current_python == paths.home / "runtimes" / "mlx" / "current" / "venv" / "bin" / "python"


def test_require_runtime_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = make_paths(tmp_path, monkeypatch)
    with pytest.raises(NotFoundError, match="no MLX runtime is installed") as exc:
        rt.require_runtime(paths, check=lambda p: None)
    assert "nativellm mlx install" in exc.value.hint
    _fake_runtime(paths, "a", "1")
    rt.Runtimes(paths).set_current("a")
    with pytest.raises(
        StoreError, match="the current MLX runtime a is broken: importing mlx_lm fails"
    ) as broken:
        rt.require_runtime(paths, check=lambda p: "importing mlx_lm fails: ImportError")
    assert "nativellm mlx install" in broken.value.hint and "rollback" in broken.value.hint
    assert rt.runtime_problem(tmp_path / "gone") == f"its Python {tmp_path / 'gone'} is missing"


# -- the instance use cases ---------------------------------------------------------------------
def _mlx_instances(paths: Paths, runtime: object = None) -> Instances:
    def runtime_python(p: Paths) -> Path:
        if isinstance(runtime, Exception):
            raise runtime
        return p.home / "runtimes" / "mlx" / "current" / "venv" / "bin" / "python"

    return Instances(paths, None, profile=_profile, port_in_use=lambda port, host: False, server_flags=_today,
                     mlx_runtime=runtime_python)  # fmt: skip


@pytest.fixture()
def mlx_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    paths = make_paths(tmp_path, monkeypatch)
    add_mlx_model(paths, write_mlx_dir(tmp_path / "tiny"))
    add_model(paths, write_gguf(tmp_path / "g.gguf"), name="g")
    return paths


def test_add_an_mlx_instance_writes_the_unit_and_the_alias(mlx_paths: Paths) -> None:
    out = _mlx_instances(mlx_paths).add("q4", InstanceOptions(model="tiny", port=8090))
    assert out.changed and out.spec is not None and out.spec.engine == "mlx"  # auto: an MLX model
    assert out.spec.threads is None  # llama-server's default --threads does not apply
    alias = mlx_paths.home / "mlx" / "instances" / "q4" / "q4"
    assert alias.resolve() == ModelRegistry(mlx_paths).get("tiny").path
    assert (
        "-m mlx_lm server --model q4"
        in (mlx_paths.units / "llama@q4.service.d" / "50-nativellm.conf").read_text()
    )
    assert not _mlx_instances(mlx_paths).add("q4", InstanceOptions(model="tiny", port=8090)).changed
    _mlx_instances(mlx_paths).remove("q4")
    assert not alias.parent.exists()


@pytest.mark.parametrize(
    ("opts", "runtime", "error", "message"),
    [
        (InstanceOptions(model="g", engine="mlx"), None, ModelError, "--engine mlx needs an MLX model directory"),
        (InstanceOptions(model="tiny", engine="llama"), None, ModelError, "llama-server cannot load an MLX"),
        (InstanceOptions(model="tiny", engine="metal"), None, UsageError, "--engine 'metal' is invalid"),
        (InstanceOptions(model="tiny", gpu_layers=9), None, UsageError, "--gpu-layers is a llama-server setting"),
        (InstanceOptions(model="tiny"), NotFoundError("no MLX runtime is installed", "install it"), NotFoundError,
         "no MLX runtime is installed"),
    ],
)  # fmt: skip
def test_bad_mlx_input_fails_before_anything_is_written(
    mlx_paths: Paths, opts: InstanceOptions, runtime: object, error: type[Exception], message: str
) -> None:
    before = _snapshot(mlx_paths)
    with pytest.raises(error, match=message):
        _mlx_instances(mlx_paths, runtime).add("q4", opts)
    assert _snapshot(mlx_paths) == before


def test_an_mlx_model_broken_since_model_add_is_refused(mlx_paths: Paths) -> None:
    (ModelRegistry(mlx_paths).get("tiny").path / "model.safetensors").unlink()
    before = _snapshot(mlx_paths)
    with pytest.raises(ModelError, match="model 'tiny': .* has no weights") as exc:
        _mlx_instances(mlx_paths).add("q4", InstanceOptions(model="tiny", port=8090))
    assert "model verify tiny" in exc.value.hint
    assert _snapshot(mlx_paths) == before
