"""Fuzz the instance TOML loader (specs.load_spec, then validate as `instance start` does)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest
import tomli_w
from hypothesis import given
from hypothesis import strategies as st

from nativellm.errors import NativeLLMError
from nativellm.specs import InstanceSpec, load_spec

from .conftest import check

pytestmark = pytest.mark.fuzz

FIELDS = [f.name for f in dataclasses.fields(InstanceSpec)]
toml_scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.sampled_from(["127.0.0.1", "0.0.0.0", "::1", "on", "q8_0", "/k", "h:1", "abc", ""]),
)
toml_values = st.recursive(
    toml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
docs = st.fixed_dictionaries(
    {
        "name": st.one_of(st.just("i"), toml_values),
        "model": st.one_of(st.just("m"), toml_values),
        "port": st.one_of(st.integers(-5, 70000), toml_values),
    },
    optional={f: toml_values for f in FIELDS if f not in ("name", "model", "port")}
    | {"schema": toml_values, "zz": toml_values},
)
texts = st.one_of(
    st.builds(tomli_w.dumps, docs),
    st.builds(lambda d, junk: tomli_w.dumps(d) + junk, docs, st.text(max_size=40)),
    st.text(max_size=400),
)


def load(config: Path) -> object:
    spec = load_spec(config, "i")
    return spec.validate() if spec else None


def write_spec(workdir: Path, text: str) -> Path:
    config = workdir / "config"
    shutil.rmtree(config, ignore_errors=True)
    (config / "instances").mkdir(parents=True)
    (config / "instances" / "i.toml").write_bytes(text.encode("utf-8", "surrogateescape"))
    return config


# Crashes this tier found (issue 14; TypeError/AttributeError before): each now ends as a NativeLLMError.
@pytest.mark.parametrize(
    "text",
    [
        'name = "i"\nmodel = "m"\nport = "abc"\n',
        'name = "i"\nmodel = "m"\nport = []\n',
        'name = []\nmodel = "m"\nport = 1\n',
        'name = "i"\nmodel = "m"\nport = 1\nhost = []\n',
        'name = "i"\nmodel = "m"\nport = 1\nctx = []\n',
        'name = "i"\nmodel = "m"\nport = 1\ngpu_layers = "x"\n',
        'name = "i"\nmodel = "m"\nport = 1\ngpus = false\n',
        'name = "i"\nmodel = "m"\nport = 1\nextra_args = false\n',
    ],
)
def test_instance_toml_regressions(tmp_path: Path, text: str) -> None:
    config = write_spec(tmp_path, text)
    with pytest.raises(NativeLLMError):
        load(config)


@given(text=texts)
def test_instance_toml(workdir: Path, text: str) -> None:
    config = write_spec(workdir, text)
    check("instance toml", lambda: load(config), len(text.encode("utf-8", "surrogateescape")))
