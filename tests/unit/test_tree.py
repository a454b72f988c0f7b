"""Source-aware planning: reading a llama.cpp tree's CMake options (real files of real vintages, copied
from llama-cpp-python sdists into tests/fixtures/cmake), adapting the plan to them, and the one-line
error of a failed CMake step (a real configure log)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nativellm.build.pipeline import compute_build_id, step_error
from nativellm.build.plan import BuildPlan, PlanOptions, plan_build
from nativellm.build.smoke import server_knows
from nativellm.build.source import Source
from nativellm.build.toolchain import Toolchain, failure_essence, troubleshoot
from nativellm.build.tree import (
    UNKNOWN,
    TreeOptions,
    parse_build_info,
    parse_changelog_commit,
    parse_cmake_options,
    read_tree_options,
    referenced_names,
)
from nativellm.errors import PlanError
from nativellm.hardware.profile import HostProfile

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
CMAKE = FIXTURES / "cmake"


def _profile(name: str) -> HostProfile:
    return HostProfile.from_dict(json.loads((FIXTURES / "profiles" / f"{name}.json").read_text()))


def _options(*files: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for f in files:
        for k, v in parse_cmake_options((CMAKE / f).read_text()).items():
            found.setdefault(k, v)
    return found


# --- parsing real CMake files --------------------------------------------------------------------


def test_options_of_a_2026_ggml_tree() -> None:
    opts = _options("llama.cpp-0c1e570-ggml-CMakeLists.txt")
    assert opts["GGML_AVX512"] == "OFF"
    assert opts["GGML_SSE42"] == "${INS_ENB}"
    assert opts["GGML_AMX_INT8"] == "OFF"  # declared inside an if() block: still an option of the tree
    # set(... CACHE STRING ...), with a quoted list value, is a declaration too
    assert opts["GGML_CUDA_FA_QUANTS"] == "q4_0-q4_0;q8_0-q8_0;f16-f16;bf16-bf16"
    assert opts["GGML_CPU_ARM_ARCH"] == ""
    assert "GGML_CUDA_FA_ALL_QUANTS" in opts


def test_options_of_a_late_2024_ggml_tree() -> None:
    opts = _options("llama.cpp-74d73dc-ggml-CMakeLists.txt")
    assert opts["GGML_CUDA_FA_ALL_QUANTS"] == "OFF"
    assert "GGML_CUDA_FA_QUANTS" not in opts
    # nativellm plans these; this vintage predates them
    assert not {"GGML_SSE42", "GGML_BMI2", "GGML_AVX_VNNI"} & opts.keys()


def test_mid_2025_tree_declares_curl_on() -> None:
    opts = _options("llama.cpp-4227c9b-CMakeLists.txt")
    assert opts["LLAMA_CURL"] == "ON"
    assert "LLAMA_OPENSSL" not in opts


def test_early_2026_server_names_the_web_ui_option_webui() -> None:
    opts = _options("llama.cpp-f49e917-server-CMakeLists.txt")
    assert opts["LLAMA_BUILD_WEBUI"] == "ON"


def test_comments_and_deprecations_are_not_options() -> None:
    text = (
        '# option(LLAMA_FAKE "in a comment" ON)\n'
        'option(LLAMA_REAL "has a # in its doc" ON) # option(LLAMA_TRAILING "x" ON)\n'
        "llama_option_depr(WARNING     LLAMA_CURL)\n"
        "if (GGML_CUDA_CUB_3DOT2)\nendif()\n"
    )
    assert parse_cmake_options(text) == {"LLAMA_REAL": "ON"}
    assert referenced_names(text) == {"LLAMA_REAL", "GGML_CUDA_CUB_3DOT2"}


def test_revision_from_the_sdist_changelog() -> None:
    text = (CMAKE / "llama-cpp-python-0.3.36-CHANGELOG.md").read_text()
    assert parse_changelog_commit(text, "0.3.36") == "0c1e57098"
    assert parse_changelog_commit(text, "0.3.35") == "4df29be4f"  # the newest update of that release
    assert parse_changelog_commit(text, "9.9.9") is None
    assert parse_build_info("set(BUILD_NUMBER 0)\n") is None  # upstream's placeholder
    assert parse_build_info("set(BUILD_NUMBER 5002)\n") == "b5002"


def test_read_tree_reads_git_files_without_git(tmp_path: Path) -> None:
    tree = tmp_path / "llama.cpp"
    (tree / "ggml").mkdir(parents=True)
    (tree / "CMakeLists.txt").write_text('option(LLAMA_CURL "curl" ON)\n')
    (tree / "ggml" / "CMakeLists.txt").write_text('option(GGML_AVX "avx" ON)\n')
    assert read_tree_options(tree).commit == UNKNOWN
    sha = "0c1e57098bba43ac29e6e3b677cdceebdd22334f"
    (tree / ".git" / "refs" / "tags").mkdir(parents=True)
    (tree / ".git" / "HEAD").write_text(sha + "\n")
    (tree / ".git" / "refs" / "tags" / "b7000").write_text(sha + "\n")
    got = read_tree_options(tree)
    assert (got.commit, got.build, got.revision_from) == (sha, "b7000", ".git")
    assert got.declares("LLAMA_CURL") and got.declares("GGML_AVX") and not got.declares("GGML_AVX2")


# --- planning against a tree -------------------------------------------------------------------------


def _tree(options: dict[str, str], **kw: object) -> TreeOptions:
    return TreeOptions(options, commit="4227c9be4268ac844921b90f31595f81236bd317", **kw)  # type: ignore[arg-type]


def test_without_a_tree_the_plan_is_as_before() -> None:
    plan = plan_build(_profile("zen4-epyc"))
    assert plan.source is None and "source" not in plan.to_dict() and plan.dropped() == ()


def test_curl_is_switched_off_where_declared() -> None:
    profile = _profile("zen4-epyc")
    base = plan_build(profile)
    tree = _tree({**dict.fromkeys(base.cmake_defines, "OFF"), "LLAMA_CURL": "ON"})
    plan = plan_build(profile, PlanOptions(), tree)
    assert plan.cmake_defines["LLAMA_CURL"] == "OFF"
    assert "declares LLAMA_CURL (default ON)" in plan.reasons["LLAMA_CURL"]
    assert "commit 4227c9be4" in plan.reasons["LLAMA_CURL"]
    assert plan.source is not None and plan.source.adapted == ("LLAMA_CURL",)
    # a tree that no longer has it gets no LLAMA_CURL at all
    assert (
        "LLAMA_CURL" not in plan_build(profile, PlanOptions(), _tree(dict(base.cmake_defines))).cmake_defines
    )


def test_old_names_are_used_and_unknown_defines_dropped_with_their_reason() -> None:
    profile = _profile("rtx5090-cuda128")
    base = plan_build(profile)
    old = set(base.cmake_defines) - {
        "GGML_CUDA_FA_QUANTS", "LLAMA_BUILD_UI", "LLAMA_USE_PREBUILT_UI", "LLAMA_OPENSSL",
        "GGML_CUDA_CUB_3DOT2", "GGML_SSE42",
    }  # fmt: skip
    tree = _tree(
        {**dict.fromkeys(old, "OFF"), "GGML_CUDA_FA_ALL_QUANTS": "OFF", "LLAMA_BUILD_WEBUI": "ON"},
        bundled_ui=True,
    )
    plan = plan_build(profile, PlanOptions(), tree)
    d = plan.cmake_defines
    assert d["GGML_CUDA_FA_ALL_QUANTS"] == "OFF" and "GGML_CUDA_FA_QUANTS" not in d
    assert d["LLAMA_BUILD_WEBUI"] == "ON"  # the committed UI is embedded offline in such trees
    assert "names LLAMA_BUILD_UI LLAMA_BUILD_WEBUI" in plan.reasons["LLAMA_BUILD_WEBUI"]
    assert set(plan.dropped()) == {
        "GGML_CUDA_FA_QUANTS", "LLAMA_BUILD_UI", "LLAMA_USE_PREBUILT_UI", "LLAMA_OPENSSL",
        "GGML_CUDA_CUB_3DOT2", "GGML_SSE42",
    }  # fmt: skip
    assert plan.reasons["GGML_SSE42"].startswith("not passed: this tree (commit 4227c9be4) does not know")
    assert "builds without it" in plan.reasons["GGML_SSE42"]
    # CMake's own and the superbuild's defines are never dropped
    assert {"CMAKE_CUDA_ARCHITECTURES", "CMAKE_BUILD_TYPE", "BUILD_SHARED_LIBS", "NATIVELLM_CPU_TUNE"} <= set(
        d
    )
    # a tree that only reads a name (no option()) knows it
    reading = _tree(dict.fromkeys(base.cmake_defines, "OFF"), referenced=frozenset({"GGML_CUDA_CUB_3DOT2"}))
    assert "GGML_CUDA_CUB_3DOT2" in plan_build(profile, PlanOptions(), reading).cmake_defines


def test_a_tree_without_the_committed_ui_builds_none() -> None:
    profile = _profile("zen4-epyc")
    names = set(plan_build(profile).cmake_defines) - {"LLAMA_BUILD_UI"}
    plan = plan_build(
        profile, PlanOptions(), _tree({**dict.fromkeys(names, "OFF"), "LLAMA_BUILD_WEBUI": "ON"})
    )
    assert plan.cmake_defines["LLAMA_BUILD_WEBUI"] == "OFF"
    assert "runs npm inside CMake here" in plan.reasons["LLAMA_BUILD_WEBUI"]
    assert any(w.startswith("web UI left out:") and "--no-ui" in w for w in plan.warnings)


def test_no_ui_turns_the_ui_off_in_every_tree_and_says_why() -> None:
    profile = _profile("zen4-epyc")
    plain = plan_build(profile, PlanOptions(ui=False))
    assert plain.cmake_defines["LLAMA_BUILD_UI"] == "OFF"
    assert plain.reasons["LLAMA_BUILD_UI"] == "--no-ui: llama-server serves no web UI"
    assert plan_build(profile).cmake_defines["LLAMA_BUILD_UI"] == "ON"
    # UI on and off are different builds
    src = Source(Path("/x"), {"kind": "directory", "tree_sha256": "0" * 64})
    tools = Toolchain("cmake", "ninja", "3.31.0", "gcc 12", "g++ 12")
    assert compute_build_id(plain, src, tools, profile) != compute_build_id(
        plan_build(profile), src, tools, profile
    )
    # an older tree's committed UI is left out too, and nothing warns: the user asked
    names = set(plan_build(profile).cmake_defines) - {"LLAMA_BUILD_UI"}
    for bundled in (True, False):
        tree = _tree({**dict.fromkeys(names, "OFF"), "LLAMA_BUILD_WEBUI": "ON"}, bundled_ui=bundled)
        plan = plan_build(profile, PlanOptions(ui=False), tree)
        assert plan.cmake_defines["LLAMA_BUILD_WEBUI"] == "OFF"
        assert plan.reasons["LLAMA_BUILD_WEBUI"].endswith("--no-ui: llama-server serves no web UI")
        assert not any("web UI" in w for w in plan.warnings)
    # the build's own reason (no npm) reaches the plan
    why = "wanted, but npm is not installed, so the web UI cannot be built"
    assert plan_build(profile, PlanOptions(ui=False, no_ui_reason=why)).reasons["LLAMA_BUILD_UI"] == why


def test_plan_source_round_trips_and_keeps_the_build_id() -> None:
    profile = _profile("zen4-epyc")
    base = plan_build(profile)
    tree = _tree({**dict.fromkeys(base.cmake_defines, "OFF"), "LLAMA_CURL": "ON"}, build="b5500")
    plan = plan_build(profile, PlanOptions(), tree)
    doc = plan.to_dict()
    assert doc["source"] == {
        "commit": "4227c9be4268ac844921b90f31595f81236bd317",
        "build": "b5500",
        "revision_from": "",
        "adapted": ["LLAMA_CURL"],
    }
    assert BuildPlan.from_dict(doc) == plan
    # the tree's revision is not hashed twice: the source identity already is
    src = Source(Path("/x"), {"kind": "directory", "tree_sha256": "0" * 64})
    tools = Toolchain("cmake", "ninja", "3.31.0", "gcc 12", "g++ 12")
    stripped = BuildPlan(plan.backend, plan.cmake_defines, {}, plan.targets)
    assert compute_build_id(plan, src, tools, profile) == compute_build_id(stripped, src, tools, profile)


# --- failures that say what to do ----------------------------------------------------------------


def test_essence_of_a_real_failed_configure() -> None:
    log = (CMAKE / "configure-missing-curl.log").read_text()
    assert failure_essence(log) == "Could NOT find CURL. Hint: to disable this feature, set -DLLAMA_CURL=OFF"
    fix = troubleshoot(log)
    assert fix is not None and "LLAMA_CURL=OFF" in fix
    err = step_error("configure", 1, log, Path("/store/work/build.log"))
    assert err.message == (
        "llama.cpp configure step failed (exit 1): Could NOT find CURL. Hint: to disable this feature, "
        "set -DLLAMA_CURL=OFF; full log: /store/work/build.log"
    )
    assert "\n" not in err.message and err.hint == fix


def test_essence_of_a_real_configure_that_nvcc_refused() -> None:
    """CUDA 13's nvcc asked for sm_50 (which it dropped): CMake's try-compile fails at enable_language."""
    log = (CMAKE / "configure-nvcc-unsupported-arch.log").read_text()
    assert failure_essence(log) == (
        "The CUDA compiler is not able to compile a simple test program. It fails with the following "
        "output: nvcc fatal : Unsupported gpu architecture 'compute_50'"
    )
    fix = troubleshoot(log)
    assert fix is not None and "CUDA 13 dropped sm_50 to sm_72" in fix


@pytest.mark.parametrize(
    ("log", "essence"),
    [
        (
            'CMake Error: The source directory "/x" does not exist.\n',
            'The source directory "/x" does not exist.',
        ),
        (
            "[3/90] Building CXX object a.o\nFAILED: a.o\n/src/a.cpp:3:1: error: 'x' was not declared\n",
            "/src/a.cpp:3:1: error: 'x' was not declared",
        ),
        ("-- Configuring done\n", None),
    ],
)
def test_essence_of_other_failures(log: str, essence: str | None) -> None:
    assert failure_essence(log) == essence


def test_known_signatures_still_win_the_hint() -> None:
    log = "FAILED: x.o\nc++: fatal error: Killed signal terminated program cc1plus\n"
    err = step_error("compile", 1, log, Path("/l"))
    assert "Killed signal" in err.message and "--jobs 1" in err.hint


def test_old_trees_build_the_tools_from_examples() -> None:
    profile = _profile("zen4-epyc")
    names = dict.fromkeys(plan_build(profile).cmake_defines, "OFF")
    plan = plan_build(profile, PlanOptions(), _tree(names, tools_in_examples=True))
    assert plan.cmake_defines["LLAMA_BUILD_EXAMPLES"] == "ON"
    assert "live in examples/" in plan.reasons["LLAMA_BUILD_EXAMPLES"]
    assert plan_build(profile, PlanOptions(), _tree(names)).cmake_defines["LLAMA_BUILD_EXAMPLES"] == "OFF"


def test_defines_by_hand_come_last_and_are_checked() -> None:
    profile = _profile("zen4-epyc")
    names = {**dict.fromkeys(plan_build(profile).cmake_defines, "OFF"), "LLAMA_CURL": "ON"}
    opts = PlanOptions(defines=(("LLAMA_CURL", "ON"), ("GGML_X", "1")))
    plan = plan_build(profile, opts, _tree(names))
    assert plan.cmake_defines["LLAMA_CURL"] == "ON" and plan.cmake_defines["GGML_X"] == "1"
    assert plan.reasons["LLAMA_CURL"] == "--define: set by hand, passed as given"
    assert plan.reasons["GGML_X"].endswith("does not declare it")
    with pytest.raises(PlanError, match="not a CMake variable name"):
        plan_build(profile, PlanOptions(defines=(("A B", "1"),)))


def test_the_smoke_test_asks_the_server_which_flags_it_knows() -> None:
    # `llama-server --help` of the 2026-10 tree (0c1e570): one line lists the four spellings
    line = "--ui,  --webui, --no-ui, --no-webui     whether to enable the Web UI (default: enabled)"
    assert server_knows(f"usage\n{line}\n", "--no-webui")
    assert not server_knows(
        "--ui-config, --webui-config JSON  JSON that provides default UI settings\n", "--no-webui"
    )
    assert not server_knows("--no-webui-mcp-proxy   x\n", "--no-webui")
