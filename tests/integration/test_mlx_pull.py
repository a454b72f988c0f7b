"""`model pull hf:OWNER/REPO` of an MLX repository through huggingface_hub, against the loopback Hub
of test_models_hf (the tree API and `resolve` URLs as huggingface.co answers them) (issue 17)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path

import pytest
from ggufs import write_gguf
from mlxdirs import write_mlx_dir

from tests.integration.test_models_hf import COMMIT, REPO, Hub, HubHandler, HubServer, _pull


@pytest.fixture
def mlx_hub(tmp_path: Path) -> Iterator[HubServer]:
    h = Hub()
    for p in write_mlx_dir(tmp_path / "src").iterdir():
        h.files[p.name] = p.read_bytes()
    h.files["README.md"] = b"# tiny mlx\n"
    h.files["extra/notes.txt"] = b"not part of the model\n"
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), type("H", (HubHandler,), {"hub": h}))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield HubServer(f"http://127.0.0.1:{httpd.server_address[1]}", h)
    httpd.shutdown()
    httpd.server_close()


def test_pull_of_an_mlx_repository_registers_its_snapshot_directory(
    mlx_hub: HubServer, tmp_path: Path
) -> None:
    res = _pull(mlx_hub, tmp_path, f"hf:{REPO}", "--name", "tiny-mlx", "--json")
    assert res.returncode == 0, res.stderr
    rec = res.json()["data"]["model"]
    assert rec["source"] == "hf" and rec["facts"]["format"] == "mlx" and rec["facts"]["vocab_size"] == 40
    model = Path(rec["path"])
    assert str(tmp_path / "hf") in rec["path"] and COMMIT in rec["path"] and model.is_dir()
    assert sorted(p.name for p in model.iterdir()) == sorted(
        ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    )
    fetched = {p for _, p, _, _ in mlx_hub.hub.log}
    assert (
        f"/{REPO}/resolve/main/README.md" not in fetched
        and f"/{REPO}/resolve/main/extra/notes.txt" not in fetched
    )
    again = _pull(mlx_hub, tmp_path, f"hf:{REPO}", "--name", "tiny-mlx", "--json")
    assert again.returncode == 0 and again.json()["changed"] is False


def test_pull_of_a_repository_without_an_mlx_model_is_refused(mlx_hub: HubServer, tmp_path: Path) -> None:
    mlx_hub.hub.files.clear()
    mlx_hub.hub.files["tiny-Q4_K_M.gguf"] = write_gguf(tmp_path / "a.gguf").read_bytes()
    res = _pull(mlx_hub, tmp_path, f"hf:{REPO}", "--name", "nothing")
    assert res.returncode == 9
    assert res.stderr.splitlines() == [
        f"error: {REPO} is not an MLX model repository (it has no config.json and *.safetensors)",
        f"  hint: pull one of its GGUF files: hf:{REPO}/tiny-Q4_K_M.gguf",
    ]
    assert not (tmp_path / "home" / "data" / "models" / "index.json").exists()


def test_pull_of_an_mlx_repository_with_a_broken_config_registers_nothing(
    mlx_hub: HubServer, tmp_path: Path
) -> None:
    mlx_hub.hub.files["config.json"] = mlx_hub.hub.files["config.json"].replace(
        b'"vocab_size": 40', b'"vocab_size": 41'
    )
    res = _pull(mlx_hub, tmp_path, f"hf:{REPO}", "--name", "broken")
    assert res.returncode == 9, res.stderr
    assert "vocab_size 41, but model.embed_tokens.weight has 40 rows" in res.stderr.splitlines()[0]
    assert not (tmp_path / "home" / "data" / "models" / "index.json").exists()
