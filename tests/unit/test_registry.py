"""load() and devices() are driven by what each backend declares: a new backend is one class and
one registration, with nothing in load() to edit."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edgekit
from edgekit.artifact import sha256_file
from edgekit.errors import ArtifactError, DeviceUnavailableError
from edgekit.runtimes import registry
from edgekit.runtimes.base import Backend, GenerationOptions, TokenEvent


class EchoBackend(Backend):
    """A backend for a made-up format: it spells the prompt back, one byte per token."""

    name = "echo"
    formats = frozenset({"echo"})
    tasks = frozenset({"text-generation"})
    devices = frozenset({"cpu"})

    def __init__(self, artifact: Path, manifest: dict[str, Any], device: str, n_ctx: int | None,
                 threads: int | None = None) -> None:
        self.text = (artifact / manifest["model_file"]).read_bytes()

    @classmethod
    def auto_device(cls) -> tuple[str, str]:
        return "cpu", "echo runs anywhere"

    @classmethod
    def device_report(cls) -> dict[str, Any]:
        return {"devices": ["cpu"], "auto": "cpu", "why": "echo runs anywhere"}

    @property
    def context_length(self) -> int:
        return 64

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return list(text.encode())

    def is_end(self, token_id: int) -> bool:
        return False

    def generate(self, prompt_ids: Sequence[int], options: GenerationOptions) -> Iterator[TokenEvent]:
        for b in self.text[: options.max_tokens]:
            yield TokenEvent(b, bytes([b]))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        pass


@pytest.fixture
def echo_registered(monkeypatch):
    real = registry.backends
    monkeypatch.setattr(registry, "backends", lambda: [*real(), EchoBackend])


def _artifact(tmp_path: Path, fmt: str = "echo") -> Path:
    (tmp_path / "model.echo").write_bytes(b"hello")
    entry = {"name": "model.echo", "size": 5, "sha256": sha256_file(tmp_path / "model.echo")}
    (tmp_path / "edgekit.json").write_text(json.dumps({"schema_version": 1, "format": fmt,
                                                       "task": "text-generation",
                                                       "model_file": "model.echo", "files": [entry]}))
    return tmp_path


def test_a_registered_backend_serves_its_format(echo_registered, tmp_path):
    with edgekit.load(_artifact(tmp_path)) as engine:
        assert engine.device == "cpu" and isinstance(engine.backend, EchoBackend)
        assert engine.generate("x", max_tokens=3).text == "hel"
    assert edgekit.devices()["echo"]["auto"] == "cpu"


def test_device_the_backend_does_not_know_is_refused(echo_registered, tmp_path):
    with pytest.raises(DeviceUnavailableError, match="echo cannot run on 'cuda'"):
        edgekit.load(_artifact(tmp_path), device="cuda")


def test_unserved_format_names_what_is_served(tmp_path):
    with pytest.raises(ArtifactError, match=r"no runtime serves format 'echo' .*gguf/text-generation"):
        edgekit.load(_artifact(tmp_path))


def test_the_real_backends_declare_what_they_serve():
    served = {(f, t): cls.__name__ for cls in registry.backends() for f in cls.formats for t in cls.tasks}
    assert served == {("gguf", "text-generation"): "LlamaCppBackend",
                      ("gguf", "feature-extraction"): "LlamaCppBackend",
                      ("onnx", "text-generation"): "OnnxRuntimeBackend",
                      ("onnx", "feature-extraction"): "OnnxEncoderBackend"}
