"""What an ONNX model file must satisfy before ONNX Runtime opens it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from edgekit.errors import ArtifactError, UnsafePathError
from edgekit.paths import safe_member


def check_external_data(root: Path, model_file: str, listed: set[str] | None = None) -> None:
    """Every external-data location of an ONNX model must stay inside the artifact directory
    (and, given `listed`, be one of its hashed files).

    ONNX Runtime would otherwise open whatever path the file names (../../secret, /etc/...).
    """
    import onnx

    path = safe_member(root, model_file)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ArtifactError(f"{path}: not a readable ONNX model ({exc})") from exc
    for tensor in _all_tensors(model.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            safe_member(root, location)
            if listed is not None and location not in listed:
                raise UnsafePathError(f"{path}: external data '{location}' is not in the artifact's "
                                      "hash list")


def _all_tensors(graph) -> Iterator:
    """Every tensor an ONNX graph holds: initializers (sparse ones too), tensors in node attributes
    (Constant), and the same inside subgraphs (If, Loop, Scan bodies)."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)
