"""llama.cpp vintages, configure only: nativellm's real plan, adapted to each tree, then CMake's real
configure step over the cpp/ superbuild, for the trees vendored by llama-cpp-python sdists from late
2024 to late 2026. And a configure that really fails must say why in its one line."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from nativellm.build.options import BuildOptions
from nativellm.build.pipeline import configure_llama
from nativellm.build.plan import PlanOptions
from nativellm.build.source import SourceRequest
from nativellm.build.tree import read_tree_options
from nativellm.errors import BuildError
from nativellm.paths import resolve_paths
from tests.helpers import SDIST_VERSION, _fetch_sdist, nativellm

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Vintage:
    sdist: str  # llama-cpp-python version
    released: str  # the sdist's upload date on PyPI
    commit: str  # the llama.cpp commit it vendors (its CHANGELOG, and the sdist's .git/modules)
    adapted: frozenset[str]  # defines the plan must adapt for this tree (on an x86-64 CPU plan)
    build: str = "unknown"  # the release tag on that commit, where the sdist's git data carries one


# Span: Nov 2024 -> Oct 2026. Each row exercises a different adaptation.
VINTAGES = (
    # the server lives in examples/; pre-SSE42/BMI2/AVX_VNNI options; LLAMA_CURL (default OFF)
    Vintage("0.3.2", "2024-11-16", "74d73dc85cc2057446bf63cc37ff649ae7cebd80",
            frozenset({"LLAMA_BUILD_EXAMPLES", "LLAMA_CURL", "LLAMA_SERVER_SSL", "LLAMA_OPENSSL",
                       "LLAMA_BUILD_UI", "LLAMA_USE_PREBUILT_UI"})),
    # mid-2025: LLAMA_CURL defaults ON, and configure fails without libcurl's headers
    Vintage("0.3.16", "2025-08-15", "4227c9be4268ac844921b90f31595f81236bd317",
            frozenset({"LLAMA_CURL", "LLAMA_SERVER_SSL", "LLAMA_OPENSSL", "LLAMA_BUILD_UI",
                       "LLAMA_USE_PREBUILT_UI"})),
    # early 2026: the web UI option is LLAMA_BUILD_WEBUI, embedding the UI committed in the tree
    Vintage("0.3.20", "2026-04-03", "f49e9178767d557a522618b16ce8694f9ddac628",
            frozenset({"LLAMA_BUILD_UI", "LLAMA_BUILD_WEBUI", "LLAMA_USE_PREBUILT_UI"})),
    # mid-2026: LLAMA_BUILD_UI/LLAMA_USE_PREBUILT_UI as today; its git data tags the commit b9445
    Vintage("0.3.24", "2026-06-01", "af6528e6df5d798f7f1363ec1141699be0f638e2", frozenset(), "b9445"),
    # today's names: nothing to adapt
    Vintage(SDIST_VERSION, "2026-10-01", "0c1e57098bba43ac29e6e3b677cdceebdd22334f", frozenset()),
)  # fmt: skip
_CACHE_LINE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*):(\w+)=(.*)$", re.MULTILINE)


def _cache(build_dir: Path) -> dict[str, tuple[str, str]]:
    """CMakeCache.txt: name -> (type, value)."""
    text = (build_dir / "CMakeCache.txt").read_text()
    return {m.group(1): (m.group(2), m.group(3)) for m in _CACHE_LINE_RE.finditer(text)}


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vintages-home")


@pytest.mark.parametrize("vintage", VINTAGES, ids=lambda v: v.sdist)
def test_every_vintage_configures_with_a_plan_adapted_to_it(
    vintage: Vintage, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tree = _fetch_sdist(vintage.sdist)
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    # The CPU plan: a GPU plan on this machine configures only where a toolkit is installed.
    opts = BuildOptions(plan=PlanOptions(backend=None), source=SourceRequest(directory=tree))
    t0 = time.monotonic()
    got = configure_llama(resolve_paths(), opts)  # raises BuildError with CMake's words on failure
    seconds = time.monotonic() - t0
    print(
        f"\n{vintage.sdist} ({vintage.released}, llama.cpp {vintage.commit[:9]}): configure {seconds:.1f} s"
    )

    plan, known = got.plan, read_tree_options(tree)
    assert plan.source is not None
    assert (plan.source.commit, plan.source.build, plan.source.revision_from) == (
        vintage.commit, vintage.build, ".git",
    )  # fmt: skip
    adapted = set(plan.source.adapted)
    # Each expected adaptation happened and says so; ISA defines this CPU does not reach may differ.
    assert vintage.adapted <= adapted, (vintage.adapted, adapted)
    for key in adapted:
        assert "this tree (commit " + vintage.commit[:9] in plan.reasons[key], (key, plan.reasons[key])
    if known.declares("LLAMA_CURL"):
        assert plan.cmake_defines["LLAMA_CURL"] == "OFF"
        assert "declares LLAMA_CURL" in plan.reasons["LLAMA_CURL"]
    else:
        assert "LLAMA_CURL" not in plan.cmake_defines
    # Every GGML_/LLAMA_ define passed is an option of this tree: CMake typed it (BOOL, STRING) when
    # the tree declared it; a -D name no option() or set(CACHE) declares stays UNINITIALIZED.
    cache = _cache(got.build_dir)
    undeclared = {k for k, (kind, _) in cache.items() if kind == "UNINITIALIZED"}
    assert not undeclared & {k for k in plan.cmake_defines if k.startswith(("GGML_", "LLAMA_"))}
    # ... and CMake really took the adapted values.
    for key in adapted & set(plan.cmake_defines):
        assert cache[key][1] == plan.cmake_defines[key], (key, cache[key])


def test_a_configure_that_fails_names_cmakes_hint_in_its_one_line(tmp_path: Path) -> None:
    """The mid-2025 tree with LLAMA_CURL forced back ON (--define, after the plan): configure really fails
    as on a machine without libcurl's headers (CMake's own switch hides them, so it fails here too when
    they are installed), and the error line carries llama.cpp's own hint."""
    tree = _fetch_sdist("0.3.16")
    res = nativellm(
        "build", "--source", str(tree), "--backend", "cpu", "--json",
        "--define", "LLAMA_CURL=ON", "--define", "CMAKE_DISABLE_FIND_PACKAGE_CURL=ON",
        home=tmp_path / "home", timeout=600,
    )  # fmt: skip
    assert res.returncode == BuildError.exit_code, res.stderr[-2000:]
    err = res.json()["error"]
    assert err["message"].startswith("llama.cpp configure step failed (exit 1): Could NOT find CURL.")
    assert "Hint: to disable this feature, set -DLLAMA_CURL=OFF; full log: " in err["message"]
    assert "\n" not in err["message"]
    assert "LLAMA_CURL=OFF" in err["hint"] and "libcurl" in err["hint"]


def test_cmake_reports_a_define_the_tree_ignores(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check above has teeth: a define the tree does not declare (passed by hand) stays untyped in
    CMake's cache, and the plan says the tree does not declare it."""
    monkeypatch.setenv("NATIVELLM_HOME", str(home))
    tree = _fetch_sdist(SDIST_VERSION)
    plan_opts = PlanOptions(defines=(("GGML_NOT_AN_OPTION", "ON"),))
    got = configure_llama(resolve_paths(), BuildOptions(plan=plan_opts, source=SourceRequest(directory=tree)))
    assert "does not declare it" in got.plan.reasons["GGML_NOT_AN_OPTION"]
    assert _cache(got.build_dir)["GGML_NOT_AN_OPTION"] == ("UNINITIALIZED", "ON")
    assert _cache(got.build_dir)["GGML_AVX"][0] == "BOOL"


def test_plan_cli_adapts_to_a_source_tree(tmp_path: Path) -> None:
    tree = _fetch_sdist("0.3.16")
    res = nativellm("plan", "--backend", "cpu", "--source", str(tree), "--json", home=tmp_path)
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["cmake_defines"]["LLAMA_CURL"] == "OFF" and "LLAMA_OPENSSL" not in doc["cmake_defines"]
    assert (
        doc["reasons"]["LLAMA_OPENSSL"]
        == "not passed: this tree (commit 4227c9be4) calls it LLAMA_SERVER_SSL"
    )
    assert doc["source"]["commit"] == "4227c9be4268ac844921b90f31595f81236bd317"
    table = nativellm("plan", "--backend", "cpu", "--source", str(tree), home=tmp_path)
    assert "(not passed)" in table.stdout and "adapted: " in table.stdout
    # no tree: today's plan, unchanged
    bare = nativellm("plan", "--backend", "cpu", "--json", home=tmp_path).json()
    assert "source" not in bare and bare["cmake_defines"]["LLAMA_OPENSSL"] == "OFF"
    missing = nativellm("plan", "--source", str(tmp_path / "nope"), home=tmp_path)
    assert missing.returncode == 3 and "does not exist" in missing.stderr
