#!/usr/bin/env bash
# The full CUDA cross-build for an H200 (sm_90, plus compute_90 PTX) on a GPU-less host, packed as a
# zstd artifact, with its figures recorded. Too long for CI on 2 cores (CI configures and compiles
# one CUDA unit per arch instead: tests/integration/test_cuda_compile.py); run it by hand, with
# ccache, and commit the results file it prints.
#   scripts/cuda-cross-build.sh [OUT_DIR]       (NATIVELLM_SIGNING_KEY signs the artifact if set)
# Needs: nvcc (CUDA 13), cuBLAS from the toolkit or `pip install '.[cuda13]'`, and the llama.cpp
# tree of the test suite's sdist (tests/helpers.py SDIST_VERSION), fetched on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-$PWD/.gpu}
mkdir -p "$out"
export PATH="$PWD/.venv/bin:$PATH"
export NATIVELLM_HOME=${NATIVELLM_HOME:-$HOME/.cache/nativellm-cuda-cross}
export CCACHE_DIR="${CCACHE_DIR:-$HOME/.cache/ccache}"
tree=$(python -c 'from tests.helpers import _fetch_sdist; print(_fetch_sdist())')
start=$(date +%s)
nativellm build --profile tests/fixtures/profiles/h200.json --backend cuda --portable --source "$tree" \
  --json > "$out/cuda-build.json"
build_s=$(( $(date +%s) - start ))
id=$(python -c 'import json,sys; print(json.load(open(sys.argv[1]))["data"]["build_id"])' "$out/cuda-build.json")
nativellm pack "$id" -o "$out" --json > "$out/cuda-pack.json"
python - "$out" "$id" "$build_s" <<'PY'
import json, sys
from pathlib import Path
out, build_id, build_s = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
build = json.loads((out / "cuda-build.json").read_text())["data"]
pack = json.loads((out / "cuda-pack.json").read_text())["data"]
home = Path(__import__("os").environ["NATIVELLM_HOME"])
bdir = home / "data" / "builds" / build_id
manifest = json.loads((bdir / "manifest.json").read_text())
files = [p for p in bdir.rglob("*") if p.is_file() and not p.is_symlink()]
result = {
    "schema": "nativellm.cuda-cross-build/1",
    "build_id": build_id,
    "wall_seconds_this_run": build_s,
    "cached": build.get("cached"),  # true: this run found the build in the store
    "build_duration_s": manifest.get("duration_s"),  # the compile that made it (manifest)
    "built_on": {"cpu": manifest["built_on"]["cpu"]["model"], "cores": manifest["built_on"]["cpu"]["logical_cores"]},
    "jobs": build.get("jobs"),
    "cuda_architectures": manifest["plan"]["cmake_defines"].get("CMAKE_CUDA_ARCHITECTURES"),
    "toolchain": manifest.get("toolchain"),
    "cuda_math": manifest.get("cuda_math"),
    "runtime_libs": manifest.get("runtime_libs"),
    "smoke_test": manifest.get("smoke_test"),
    "installed_bytes": sum(p.stat().st_size for p in files),
    "largest_files": sorted(([p.name, p.stat().st_size] for p in files), key=lambda x: -x[1])[:5],
    "artifact": Path(pack["file"]).name,
    "artifact_bytes": pack["size"],
    "artifact_sha256": pack["sha256"],
}
(out / "cuda-cross-build.json").write_text(json.dumps(result, indent=2) + "\n")
print(json.dumps(result, indent=2))
PY
