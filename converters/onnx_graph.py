"""A small ONNX graph builder over onnx.helper: named values, deduplicated initializers, the
MatMulNBits pattern, and saving with external data past protobuf's 2 GB limit."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class GraphBuilder:
    """A small helper over onnx.helper that names values and collects initializers."""

    def __init__(self, float_type: str, weights_as_inputs: bool = False) -> None:
        """weights_as_inputs: weight arrays become graph inputs, kept in `feeds` for one run, instead
        of initializers: nothing to serialize for a graph run once (calibration)."""
        import onnx

        self.onnx = onnx
        self.np_float = np.float16 if float_type == "float16" else np.float32
        self.elem = onnx.TensorProto.FLOAT16 if float_type == "float16" else onnx.TensorProto.FLOAT
        self.nodes: list = []
        self.inits: list = []
        self.names: set[str] = set()
        self.count = 0
        self.weight_bytes = 0
        self.kinds: dict[str, int] = {}  # weight matrices by storage: float32 / float16 / int4 / int8
        self.half_inputs: dict[str, str] = {}  # value -> its float16 cast, made once for all readers
        self.feeds: dict[str, np.ndarray] | None = {} if weights_as_inputs else None
        self.weight_inputs: list = []

    def count_kind(self, kind: str) -> None:
        self.kinds[kind] = self.kinds.get(kind, 0) + 1

    def init(self, name: str, array: np.ndarray) -> str:
        if name in self.names:  # shared constants (shapes, axes) are registered once
            return name
        self.names.add(name)
        if self.feeds is not None and array.size >= 1024:
            self.feeds[name] = np.require(array, requirements="C")  # else onnxruntime copies it per run
            self.weight_inputs.append(self.onnx.helper.make_tensor_value_info(
                name, self.onnx.helper.np_dtype_to_tensor_dtype(array.dtype), list(array.shape)))
            return name
        # np.require keeps 0-d arrays scalars (ascontiguousarray would make them [1])
        self.inits.append(self.onnx.numpy_helper.from_array(np.require(array, requirements="C"), name))
        self.weight_bytes += array.nbytes
        return name

    def matmul_nbits(self, x: str, name: str, q, accuracy_level: int, half_scales: bool = False,
                     bias: np.ndarray | None = None) -> str:
        """x @ dequant(q)^T with MatMulNBits; q's packed weights, scales and zero points (none when
        symmetric) become initializers.

        half_scales: float16 scales in a float32 graph. MatMulNBits takes its scales in the type of
        its input, so the input is cast to float16 (once per value) and the output back.
        bias: [N] added to the output inside the kernel (MatMulNBits' optional sixth input).
        """
        half = half_scales and self.np_float is np.float32
        scales = q.scales.astype(np.float16 if half else self.np_float)
        ins = [self.half(x) if half else x, self.init(name + ".q", q.packed),
               self.init(name + ".scales", scales)]
        if q.zero_points is not None:
            ins.append(self.init(name + ".zp", q.zero_points))
        if bias is not None:  # optional inputs 3 (zero points) and 4 (g_idx) left empty
            ins += [""] * (5 - len(ins)) + [self.init(name + ".bias",
                                                      bias.astype(np.float16 if half else self.np_float))]
        out = self.op("MatMulNBits", ins, domain="com.microsoft", K=q.k, N=q.n, bits=q.bits,
                      block_size=q.block_size, accuracy_level=accuracy_level)[0]
        return self.op("Cast", [out], to=self.elem)[0] if half else out

    def gather_quantized(self, q, ids: str, half_scales: bool = False) -> str:
        """Rows `ids` of a block-quantized table (GatherBlockQuantized); its bytes become the
        initializers embed.q / embed.scales / embed.zp (none when symmetric), which a tied lm_head
        can reuse. half_scales: float16 scales in a float32 graph, the rows cast back."""
        half = half_scales and self.np_float is np.float32
        ins = [self.init("embed.q", q.packed.reshape(q.n, -1)), ids,
               self.init("embed.scales",
                         q.scales.reshape(q.n, -1).astype(np.float16 if half else self.np_float))]
        if q.zero_points is not None:
            ins.append(self.init("embed.zp", q.zero_points.reshape(q.n, -1)))
        rows = self.op("GatherBlockQuantized", ins, domain="com.microsoft", gather_axis=0, quantize_axis=1,
                       block_size=q.block_size, bits=q.bits)[0]
        return self.op("Cast", [rows], to=self.elem)[0] if half else rows

    def half(self, x: str) -> str:
        """x cast to float16, made once for all its readers."""
        if x not in self.half_inputs:
            self.half_inputs[x] = self.op("Cast", [x], to=self.onnx.TensorProto.FLOAT16)[0]
        return self.half_inputs[x]

    def save(self, out_file: Path, graph_name: str, inputs: list, outputs: list) -> list[str]:
        """Write the model (weights in a side file past protobuf's 2 GB limit); return side-file names."""
        helper = self.onnx.helper
        graph = helper.make_graph(self.nodes, graph_name, inputs + self.weight_inputs, outputs, self.inits)
        self.inits.clear()  # make_graph copied them: drop ours before serializing (peak memory)
        model = helper.make_model(graph, producer_name="edgekit",
                                  opset_imports=[helper.make_opsetid("", 17),
                                                 helper.make_opsetid("com.microsoft", 1)])
        model.ir_version = 8
        return save_model(model, out_file, self.weight_bytes)

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str | None = None,
           outputs: list[str] | None = None, **attrs: Any) -> list[str]:
        self.count += 1
        name = name or f"{op_type}_{self.count}"
        outs = outputs or [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(self.onnx.helper.make_node(op_type, inputs, outs, name=name, domain=domain or None,
                                                     **attrs))
        return outs


def save_model(model, out_file: Path, weight_bytes: int) -> list[str]:
    """Save an ONNX model; past protobuf's 2 GB limit the weights go to one side file next to it.
    Returns the side-file names (empty when everything fits in out_file)."""
    import onnx

    external = weight_bytes > 1_800_000_000
    onnx.save_model(model, str(out_file), save_as_external_data=external, all_tensors_to_one_file=True,
                    location=out_file.name + ".data" if external else None, size_threshold=1024)
    return [out_file.name + ".data"] if external else []
