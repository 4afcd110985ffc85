"""Sources: hub ids through huggingface_hub's cache (offline), and the safetensors validator."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import edgekit
from edgekit.converters.source import inspect
from edgekit.errors import SourceNotFoundError

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _populate_cache(cache: Path, repo_id: str, files_from: Path) -> Path:
    """Lay out a hub cache entry exactly as huggingface_hub does (refs/main -> snapshots/<commit>)."""
    repo_dir = cache / ("models--" + repo_id.replace("/", "--"))
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(COMMIT)
    snap = repo_dir / "snapshots" / COMMIT
    shutil.copytree(files_from, snap)
    return snap


def test_hub_id_resolves_from_cache_offline(tiny_checkpoint, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snap = _populate_cache(cache, "tiny-org/tiny-qwen2", tiny_checkpoint("qwen2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    ckpt = inspect("tiny-org/tiny-qwen2")
    assert ckpt.path.resolve() == snap.resolve()
    result = edgekit.convert("tiny-org/tiny-qwen2", to="gguf", quant="fp16", output=tmp_path / "out")
    assert result.manifest["source"]["id"] == "tiny-org/tiny-qwen2"
    assert result.manifest["source"]["files"]["config.json"]


def test_hub_id_offline_without_cache_is_clear(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(SourceNotFoundError, match="HF_HUB_OFFLINE is set and the cache has no copy"):
        inspect("nobody/not-cached-model")


def test_file_instead_of_directory(tmp_path):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"x")
    with pytest.raises(SourceNotFoundError, match="expected a checkpoint directory"):
        inspect(f)


def test_manifest_carries_no_path_of_the_converting_machine(tiny_checkpoint, tmp_path):
    """Artifacts get shared: a local source is named by its directory alone, and no field is always empty."""
    src = tiny_checkpoint("qwen2")
    result = edgekit.convert(str(src), to="gguf", quant="fp16", output=tmp_path / "out")
    text = (result.path / "edgekit.json").read_text()
    assert result.manifest["source"]["id"] == src.name
    assert str(src.parent) not in text and str(tmp_path) not in text
    assert all(value is not None for key, value in result.manifest.items() if key != "chat_template")
