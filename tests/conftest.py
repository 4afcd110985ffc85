from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # tiny.py, helpers.py

import tiny  # noqa: E402

# Started with SIGINT ignored (a background job of a non-interactive shell), every process the tests
# start would inherit it, and the tests that press Ctrl-C could not: take Python's usual handler back.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The README's examples first: they convert the real models (both formats, int4 and int8) that
    the other real-model tests then read through real_artifact instead of converting them again."""
    items.sort(key=lambda item: item.path.name != "test_readme.py")  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def shared_transformers_reference():
    """Every in-process verification uses the transformers models loaded once per checkpoint."""
    from edgekit.quality import fidelity

    import helpers

    original = fidelity._TransformersReference
    fidelity._TransformersReference = helpers.shared_reference(original)
    yield
    fidelity._TransformersReference = original


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from edgekit import bundled

    return bundled.path("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    from edgekit import bundled

    return bundled.path("all-minilm-l6-v2")


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, smollm2_dir, minilm_dir):
    """Factory: a tiny random HF checkpoint of the given architecture, built once per session."""
    built: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("tiny")

    def make(arch: str) -> Path:
        if arch not in built:
            built[arch] = tiny.build(arch, root / arch, smollm2_dir, minilm_dir)
        return built[arch]

    return make


@pytest.fixture(scope="session")
def tiny_artifact(tiny_checkpoint, tmp_path_factory):
    """Factory: a tiny checkpoint converted once per session (verified, as convert does by default),
    for the tests that only read it: tiny_artifact(arch, fmt, quant) is the artifact's folder."""
    import edgekit

    done: dict[tuple[str, str, str], Path] = {}
    root = tmp_path_factory.mktemp("tiny-artifacts")

    def make(arch: str, fmt: str, quant: str) -> Path:
        key = (arch, fmt, quant)
        if key not in done:
            done[key] = edgekit.convert(str(tiny_checkpoint(arch)), to=fmt, quant=quant,
                                        output=root / "-".join(key)).path
        return done[key]

    return make


@pytest.fixture(scope="session")
def converted(tiny_artifact):
    """Factory: the GGUF file of a tiny checkpoint at a quantization, converted once per session."""
    from edgekit.artifact import MANIFEST

    def make(arch: str, quant: str) -> Path:  # the manifest as JSON: read_manifest would preflight again
        path = tiny_artifact(arch, "gguf", quant)
        return path / json.loads((path / MANIFEST).read_text())["model_file"]

    return make


class RealArtifacts:
    """real_artifact(model, fmt, quant, exporter): a bundled real model converted once per session
    (verified, as convert does by default), for the tests that only read it. adopt() takes an
    artifact that another test already made the same way (the README's examples convert the same
    models through the CLI and the API), so it is not converted again."""

    def __init__(self, root: Path) -> None:
        self.root, self.done = root, {}

    def __call__(self, model: str, fmt: str, quant: str, exporter: str = "auto") -> Path:
        import edgekit

        key = (model, fmt, quant, exporter)
        if key not in self.done:
            self.done[key] = edgekit.convert(f"bundled:{model}", to=fmt, quant=quant, exporter=exporter,
                                             output=self.root / "-".join(key)).path
        return self.done[key]

    def adopt(self, path: Path) -> None:
        """Share a finished, passing conversion of a bundled model; anything else is left alone."""
        from edgekit.artifact import MANIFEST

        try:
            m = json.loads((path / MANIFEST).read_text())
        except (OSError, ValueError):
            return
        source = m.get("source", {}).get("id", "")
        if not (source.startswith("bundled:") and m.get("fidelity", {}).get("passed")):
            return
        exporter = "optimum" if m.get("exporter") == "optimum" else "auto"
        key = (source.removeprefix("bundled:"), m["format"], m["quantization"]["label"], exporter)
        self.done.setdefault(key, path)


@pytest.fixture(scope="session")
def real_artifact(tmp_path_factory) -> RealArtifacts:
    return RealArtifacts(tmp_path_factory.mktemp("real"))


@pytest.fixture
def ckpt(tiny_checkpoint, tmp_path) -> Path:
    """A private copy of the tiny Qwen2 checkpoint that a test may damage."""
    import shutil

    dest = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint("qwen2"), dest)
    return dest


@pytest.fixture(scope="session")
def tiny_model(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny Qwen2 as ONNX int8, its position table widened to 2048 (random weights do not care):
    room for the chat prompt, chunks and answers of the summary tests."""
    import json
    import shutil

    import edgekit

    root = tmp_path_factory.mktemp("tiny-2048")
    ckpt = root / "ckpt"
    shutil.copytree(tiny_checkpoint("qwen2"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "max_position_embeddings": 2048}))
    return edgekit.convert(str(ckpt), to="onnx", quant="int8", output=root / "onnx", verify=False).path
