"""The web UI step (build/ui.py): what it hashes, what it reuses, and what it says without npm."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from nativellm.build import cmake
from nativellm.build.plan import plan_build
from nativellm.build.toolchain import Toolchain
from nativellm.build.ui import FIX, find_ui_sources, provision_ui, ui_source_key, ui_summary
from nativellm.errors import UiError
from nativellm.hardware.profile import HostProfile
from nativellm.progress import SilentReporter

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def ui_tree(root: Path) -> Path:
    """The shape of llama.cpp's tools/ui (b8xxx and later), with a few real-looking files."""
    ui = root / "tools" / "ui"
    (ui / "src" / "lib").mkdir(parents=True)
    (ui / "package.json").write_text('{"name": "llama-ui", "scripts": {"build": "vite build"}}\n')
    (ui / "package-lock.json").write_text('{"lockfileVersion": 3}\n')
    (ui / "src" / "app.html").write_text("<html>%sveltekit.body%</html>\n")
    (ui / "src" / "lib" / "chat.ts").write_text("export const x = 1;\n")
    (root / "scripts").mkdir()
    (root / "scripts" / "ui-assets.cmake").write_text("# embeds dist/\n")
    return ui


def test_the_ui_sources_are_found_only_where_nativellm_can_build_them(tmp_path: Path) -> None:
    ui = ui_tree(tmp_path / "new")
    assert find_ui_sources(tmp_path / "new") == ui
    (ui / "package-lock.json").unlink()  # npm ci needs the lock file
    assert find_ui_sources(tmp_path / "new") is None
    old = tmp_path / "old" / "tools" / "server" / "public"
    old.mkdir(parents=True)
    (old / "index.html").write_text("<html></html>")
    assert find_ui_sources(tmp_path / "old") is None


def test_the_key_follows_the_ui_sources_and_nothing_npm_writes(tmp_path: Path) -> None:
    ui = ui_tree(tmp_path)
    key = ui_source_key(ui)
    assert len(key) == 16 and key == ui_source_key(ui)
    for made in ("node_modules/vite/index.js", "dist/index.html", ".svelte-kit/x.js"):
        (ui / made).parent.mkdir(parents=True, exist_ok=True)
        (ui / made).write_text("output, not source\n")
    assert ui_source_key(ui) == key
    (ui / "src" / "lib" / "build").mkdir()  # below the top, such a name is a source like any other
    (ui / "src" / "lib" / "build" / "x.ts").write_text("export {};\n")
    assert ui_source_key(ui) != key
    key = ui_source_key(ui)
    assert ui_source_key(ui, "11312") != key  # the build number shows in the UI
    (ui / "src" / "lib" / "chat.ts").write_text("export const x = 2;\n")
    changed = ui_source_key(ui)
    assert changed != key
    (ui / "src" / "lib" / "chat.ts").rename(ui / "src" / "lib" / "chat2.ts")  # a rename is a change too
    assert ui_source_key(ui) not in (key, changed)


def no_npm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    empty = tmp_path / "empty-bin"
    empty.mkdir(exist_ok=True)
    monkeypatch.setenv("PATH", str(empty))


def test_cached_assets_are_reused_without_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ui = ui_tree(tmp_path / "tree")
    cache = tmp_path / "cache"
    dist = cache / ui_source_key(ui, "11312") / "dist"
    (dist / "_app").mkdir(parents=True)
    (dist / "index.html").write_text("<html>llama.cpp</html>")
    (dist / "_app" / "bundle.js").write_text("x" * 1000)
    no_npm(monkeypatch, tmp_path)
    assets = provision_ui(cache, ui, SilentReporter(), "11312")
    assert (assets.dist, assets.built, assets.files) == (dist, False, 2)
    assert assets.bytes == len("<html>llama.cpp</html>") + 1000
    assert ui_summary(assets).endswith("reused from the cache, 2 files, 0.0 MB")
    # other UI sources miss the cache, and then npm is needed
    with pytest.raises(UiError):
        provision_ui(cache, ui, SilentReporter(), "11313")


def test_without_npm_the_error_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ui = ui_tree(tmp_path / "tree")
    no_npm(monkeypatch, tmp_path)
    with pytest.raises(UiError) as info:
        provision_ui(tmp_path / "cache", ui, SilentReporter())
    assert info.value.message == "npm is not installed, so the web UI cannot be built"
    assert info.value.hint == FIX
    assert "install Node.js and npm" in FIX and "--no-ui" in FIX
    assert info.value.exit_code == 6  # a BuildError, though `build` catches it and warns
    assert not any((tmp_path / "cache").glob("*/dist"))


def test_cmake_gets_the_assets_only_when_there_are_some() -> None:
    profile = HostProfile.from_dict(json.loads((FIXTURES / "profiles" / "zen4-epyc.json").read_text()))
    plan = plan_build(profile)
    tools = Toolchain("cmake", "ninja", "3.31.0", "gcc 12", "g++ 12")
    src, work = Path("/src"), Path("/work/x")
    with_ui = cmake.steps(tools, plan, src, work, 2, Path("/cache/k/dist"))[0][1]
    assert "-DNATIVELLM_UI_DIST=/cache/k/dist" in with_ui
    assert "-DLLAMA_BUILD_UI=ON" in with_ui and "-DLLAMA_USE_PREBUILT_UI=OFF" in with_ui
    without = cmake.steps(tools, dataclasses.replace(plan), src, work, 2)[0][1]
    assert not any(a.startswith("-DNATIVELLM_UI_DIST") for a in without)
