"""Acceptance 3, 5 and 6 with the llama-server nativellm built: the demo model generates tokens,
an imported Ollama blob serves in place, and `fit` is within 15% of what llama-server allocates."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nativellm import run
from nativellm.build.synth import SynthSize, find_vocab, write_synthetic_llama
from nativellm.client import complete, free_port, wait_ready
from nativellm.fsutil import sha256_file
from nativellm.hardware import detect_host
from tests.helpers import CACHE, CliResult, nativellm

pytestmark = pytest.mark.slow
MiB = 1 << 20


def _bin(home: Path) -> Path:
    return (home / "data" / "current" / "bin").resolve()


@contextmanager
def serving(home: Path, model: Path, log: Path, *extra: str) -> Iterator[tuple[str, run.Process]]:
    port = free_port()
    argv = [str(_bin(home) / "llama-server"), "-m", str(model), "--host", "127.0.0.1", "--port", str(port),
            "-t", "2", "--no-webui", *extra]  # fmt: skip
    proc = run.Process(argv, log_file=log)
    base = f"http://127.0.0.1:{port}"
    try:
        h = wait_ready(base, 300, alive=lambda: proc.poll() is None)
        assert h.status == "ok", f"llama-server not ready ({h}):\n{proc.output()[-3000:]}"
        yield base, proc
    finally:
        proc.stop()


def test_demo_model_generates_tokens(auto_build: CliResult, session_home: Path, tmp_path: Path) -> None:
    res = nativellm("model", "demo", "--name", "demo-acc6", "--json", home=session_home)
    assert res.returncode == 0, res.stderr
    doc = res.json()
    assert doc["changed"] is True
    rec = doc["data"]["model"]
    assert rec["source"] == "demo" and rec["facts"]["architecture"] == "llama"
    # The tokenizer came from the current build's copy of the vocab GGUF.
    assert rec["metadata"]["vocab"].startswith(str(session_home / "data" / "builds"))
    again = nativellm("model", "demo", "--name", "demo-acc6", "--json", home=session_home)
    assert again.json()["changed"] is False
    with serving(session_home, Path(rec["path"]), tmp_path / "server.log", "-c", "512") as (base, _):
        out = complete(base, "Once upon a time", n_predict=12)
    assert int(out["tokens_predicted"]) >= 1
    print(f"demo model generated {out['tokens_predicted']} tokens: {out['content']!r}")
    assert nativellm("model", "rm", "demo-acc6", home=session_home).returncode == 0
    assert not Path(rec["path"]).exists()


def _ollama_layout(root: Path, model: Path, name: str, tag: str) -> Path:
    blobs = root / "blobs"
    blobs.mkdir(parents=True)

    def layer(data: bytes, media: str, *, move: Path | None = None) -> dict[str, object]:
        digest = hashlib.sha256(data).hexdigest()
        target = blobs / f"sha256-{digest}"
        if move is not None:
            os.replace(move, target)
        else:
            target.write_bytes(data)
        return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}

    layers = [
        layer(model.read_bytes(), "application/vnd.ollama.image.model", move=model),
        layer(b"{{ .Prompt }}", "application/vnd.ollama.image.template"),
        layer(b'{"num_ctx": 512, "stop": ["</s>"]}', "application/vnd.ollama.image.params"),
    ]
    manifest = root / "manifests" / "registry.ollama.ai" / "library" / name / tag
    manifest.parent.mkdir(parents=True)
    config = layer(b"{}", "application/vnd.docker.container.image.v1+json")
    manifest.write_text(json.dumps({"schemaVersion": 2, "config": config, "layers": layers}))
    return blobs / f"sha256-{str(layers[0]['digest']).removeprefix('sha256:')}"


def test_ollama_import_serves_in_place(
    auto_build: CliResult, session_home: Path, llama_source: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"  # a fresh store; the server binary comes from the session's build
    src = write_synthetic_llama(tmp_path / "m.gguf", find_vocab(llama_source), SynthSize.TINY, seed=3)
    blob = _ollama_layout(tmp_path / "ollama", src, "tinyllama", "1b")
    inode = os.stat(blob).st_ino
    ollama = str(tmp_path / "ollama")
    res = nativellm("model", "import-ollama", "tinyllama:1b", "--ollama-dir", ollama, "--json", home=home)
    assert res.returncode == 0, res.stderr
    assert res.json()["data"]["imported"] == ["tinyllama-1b"]
    rec = res.json()["data"]["models"][0]
    assert rec["name"] == "tinyllama-1b" and rec["source"] == "ollama"
    assert Path(rec["path"]) == blob and os.stat(rec["path"]).st_ino == inode  # not copied
    assert rec["metadata"]["params"] == {"num_ctx": 512, "stop": ["</s>"]}
    assert rec["metadata"]["template"] == "{{ .Prompt }}"
    assert not (home / "data" / "models" / "files").exists()
    with serving(session_home, Path(rec["path"]), tmp_path / "server.log", "-c", "512") as (base, _):
        out = complete(base, "Hello", n_predict=8)
    assert int(out["tokens_predicted"]) >= 1
    rm = nativellm("model", "rm", "tinyllama-1b", home=home)
    assert rm.returncode == 0 and blob.exists()


# --------------------------------------------------------------------------- acceptance 5
def _small_q4(bin_dir: Path, vocab: Path, work: Path) -> Path:
    """The ~0.4B synthetic llama quantized to Q4_K_M by the built llama-quantize (cached across sessions)."""
    cache = CACHE / "models"
    out = cache / f"fit-small-{sha256_file(vocab)[:12]}-Q4_K_M.gguf"
    if out.is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    f16 = write_synthetic_llama(work / "small-f16.gguf", vocab, SynthSize.SMALL, name="fit-small")
    tmp = cache / f".{out.name}.{os.getpid()}.tmp"
    res = run.run([str(bin_dir / "llama-quantize"), str(f16), str(tmp), "Q4_K_M"], timeout=1200)
    assert res.ok, res.stderr[-2000:]
    os.replace(tmp, out)
    f16.unlink()
    return out


_BUF = re.compile(r"(model|KV|compute) buffer size =\s+([0-9.]+) MiB")


def allocations(log: str) -> dict[str, int]:
    """Sum llama-server's own buffer reports: model (weights), KV cache, compute."""
    sums = {"model": 0.0, "KV": 0.0, "compute": 0.0}
    for kind, mib in _BUF.findall(log):
        sums[kind] += float(mib)
    return {k: int(v * MiB) for k, v in sums.items()}


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def test_fit_is_within_15_percent_of_llama_server(
    auto_build: CliResult, session_home: Path, llama_source: Path, tmp_path: Path
) -> None:
    bin_dir = _bin(session_home)
    model = _small_q4(bin_dir, find_vocab(llama_source), tmp_path)
    home = tmp_path / "home"
    add = nativellm("model", "add", str(model), "--name", "small-q4", "--json", home=home)
    assert add.returncode == 0, add.stderr
    facts = add.json()["data"]["model"]["facts"]
    assert 0.3e9 < facts["parameters"] < 0.5e9 and facts["file_type"] == "Q4_K_M"
    rows = []
    for ctx in (4096, 16384):
        fit = nativellm("model", "fit", "small-q4", "--ctx", str(ctx), "--json", home=home)
        assert fit.returncode == 0, fit.stderr
        est = fit.json()
        # --log-verbosity 4: this llama.cpp prints its buffer sizes only at that level.
        args = ("-c", str(ctx), "-np", "1", "--log-verbosity", "4")
        with serving(session_home, model, tmp_path / f"server-{ctx}.log", *args) as (base, proc):
            complete(base, "The quick brown fox", n_predict=4)
            rss = _rss(proc.pid)
            actual = allocations(proc.output())
        total = actual["model"] + actual["KV"] + actual["compute"]
        est_weights = est["weights_host_bytes"] + est["weights_gpu_bytes"]
        rows.append((ctx, est_weights, actual["model"], est["kv_cache_bytes"], actual["KV"],
                     est["compute_bytes"], actual["compute"], est["total_bytes"], total, rss))  # fmt: skip
        print(
            f"ctx {ctx}: estimate weights {est_weights / MiB:.1f} MiB, KV {est['kv_cache_bytes'] / MiB:.1f}, "
            f"compute {est['compute_bytes'] / MiB:.1f}, total {est['total_bytes'] / MiB:.1f} | llama-server "
            f"model {actual['model'] / MiB:.1f}, KV {actual['KV'] / MiB:.1f}, "
            f"compute {actual['compute'] / MiB:.1f}, "
            f"total {total / MiB:.1f} | RSS {rss / MiB:.1f} MiB | total error "
            f"{(est['total_bytes'] - total) / total * 100:+.1f}%"
        )
        assert actual["model"] and actual["KV"] and actual["compute"], proc.output()[-3000:]
        assert abs(est["total_bytes"] - total) <= 0.15 * total
        assert abs(est_weights - actual["model"]) <= 0.15 * actual["model"]
        assert abs(est["kv_cache_bytes"] - actual["KV"]) <= 0.15 * actual["KV"]
        assert abs(est["compute_bytes"] - actual["compute"]) <= 0.15 * actual["compute"]
    # The KV cache grew 4x with the context, in the estimate and in reality.
    assert rows[1][4] == pytest.approx(4 * rows[0][4], rel=0.02)


def test_fit_flags_a_model_that_does_not_fit(
    auto_build: CliResult, tmp_path: Path, llama_source: Path
) -> None:
    home = tmp_path / "home"
    model = write_synthetic_llama(tmp_path / "m.gguf", find_vocab(llama_source), SynthSize.TINY)
    assert nativellm("model", "add", str(model), "--name", "m", home=home).returncode == 0
    profile = detect_host(verify=False).to_dict()
    profile["memory_bytes"] = 32 * MiB
    (tmp_path / "p.json").write_text(json.dumps(profile))
    res = nativellm(
        "model", "fit", "m", "--ctx", "4096", "--profile", str(tmp_path / "p.json"), "--json", home=home
    )
    assert res.returncode == 0, res.stderr
    assert res.json()["verdict"] == "does_not_fit"
    human = nativellm("model", "fit", "m", "--ctx", "4096", "--profile", str(tmp_path / "p.json"), home=home)
    assert "does not fit" in human.stdout and "MiB" in human.stdout
