"""The fallback ONNX path: optimum-onnx's exporter (torch tracing) for what edgekit does not build
natively (encoders such as DistilBERT, decoders outside onnx_decoder.DECODERS), then onnxruntime's
own quantizers.

Weights: int8/int4 are MatMulNBits weight-only (block 32, asymmetric, accuracy level 4) on every
MatMul, the lm_head included, and GatherBlockQuantized on the embedding; int4 keeps the same
tensors at 8 bits as edgekit's own graphs (Precision.widened, the lm_head and the embedding),
without the activation-aware scaling, which needs our own graph's calibration taps. Dynamic int8
activation quantization is not offered: it wrecks models this small (mean KL 0.86 on SmolLM2).
fp16 converts the float weights and keeps float32 inputs and outputs.

The graph's KV cache concatenates: present = past + new tokens, so runtimes feed each step's
present back as the next step's past (manifest onnx.kv_layout = "concat") instead of sharing one
preallocated buffer as edgekit's native graphs allow.

optimum-onnx pins transformers < 4.58 (docs/architecture.md): it is the "optimum" extra. Elsewhere
edgekit uses transformers only, when installed, to write a tokenizer.json for a SentencePiece-only
checkpoint.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

from edgekit.errors import ConversionError, EdgekitError, require
from edgekit.progress import Progress
from edgekit.quiet import quiet_third_party

from .onnx_graph import save_model
from .source import Checkpoint

PURPOSE = "Exporting architectures edgekit does not build natively to ONNX"


def task_for(ckpt: Checkpoint) -> str | None:
    """optimum's task for what edgekit's runtime can serve: causal LMs with a KV cache, and bare
    encoders (or masked-LM checkpoints, exported as their encoder) as embedders. None otherwise:
    seq2seq (T5, BART), classifiers and multimodal models are not served."""
    arch = ckpt.architecture
    if arch.endswith(("ForCausalLM", "LMHeadModel")):
        return "text-generation-with-past"
    if arch.endswith(("Model", "ForMaskedLM")) and not arch.endswith("LMHeadModel"):
        return "feature-extraction"
    return None


def supports(ckpt: Checkpoint) -> bool:
    """Whether optimum's ONNX exporter knows this model type for the task (imports optimum)."""
    require("optimum.exporters.onnx", "optimum-onnx", "optimum", PURPOSE)
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX export configs)
    from optimum.exporters.tasks import TasksManager

    task = task_for(ckpt)
    model_type = str(ckpt.config.get("model_type", "")).replace("_", "-")
    try:
        tasks = TasksManager.get_supported_tasks_for_model_type(model_type, exporter="onnx",
                                                                library_name="transformers")
    except KeyError:
        return False
    return task is not None and task in tasks


def export(ckpt: Checkpoint, out_file: Path, precision, progress: Progress | None = None) -> dict[str, Any]:
    """Export `ckpt` with optimum into out_file (quantized as `precision` says); return the facts."""
    require("optimum.exporters.onnx", "optimum-onnx", "optimum", PURPOSE)
    import onnx
    import torch
    import transformers
    from optimum.exporters.onnx import onnx_export_from_model

    task = task_for(ckpt)
    work = out_file.with_name(".optimum-export")
    try:
        if progress:
            progress("export", 0, 2)
        try:
            with quiet_third_party():
                # loaded here, not by optimum's main_export, to ask for eager attention: the SDPA path
                # of transformers 4.x traces without Gemma-2's attention logit softcapping
                auto = (transformers.AutoModelForCausalLM if task != "feature-extraction"
                        else transformers.AutoModel)
                model = auto.from_pretrained(str(ckpt.path), dtype=torch.float32, attn_implementation="eager",
                                             trust_remote_code=False).eval()
                onnx_export_from_model(model, str(work), task=task, device="cpu", do_validation=False)
                del model
        except Exception as exc:  # torch tracing and optimum raise many kinds; name the source
            raise ConversionError(f"{ckpt.path}: optimum's ONNX export failed "
                                  f"({type(exc).__name__}: {exc})") from exc
        if not (work / "model.onnx").is_file():
            raise ConversionError(f"{ckpt.path}: optimum's export wrote no single model.onnx "
                                  f"({', '.join(sorted(p.name for p in work.iterdir()))}); "
                                  "edgekit cannot run it")
        model = onnx.load(str(work / "model.onnx"))  # external data is read in too
        facts = _facts(ckpt, model, task)  # refuses a graph the runtime could not feed, before writing
        if progress:
            progress("export", 1, 2)
        try:
            if precision.bits is not None:
                model = _quantize(_untie_head(model), precision, ckpt.config.get("num_hidden_layers"))
                _quantize_embedding(model, precision)
            elif precision.float_type == "float16":
                from onnxruntime.transformers.float16 import convert_float_to_float16

                model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
        except EdgekitError:
            raise
        except Exception as exc:  # onnxruntime's quantization tools raise plain exceptions
            raise ConversionError(f"{ckpt.path}: quantizing optimum's export to {precision.name} failed "
                                  f"({type(exc).__name__}: {exc})") from exc
        weight_bytes, kinds = _weights(model)
        side_files = save_model(model, out_file, weight_bytes)
        if not ckpt.has("tokenizer.json") and (work / "tokenizer.json").is_file():
            # a SentencePiece-only checkpoint: runtimes read tokenizer.json, which optimum just wrote
            shutil.copyfile(work / "tokenizer.json", out_file.with_name("tokenizer.json"))
            side_files.append("tokenizer.json")
        if progress:
            progress("export", 2, 2)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    n_params = sum(math.prod(r.shape) for r in ckpt.tensors.values())
    return {"optimum_task": task, **facts,
            "external_data": side_files,
            "bits_per_weight": round(weight_bytes * 8 / max(n_params, 1), 3), "tensor_types": kinds}


def scheme(precision) -> str:
    """What this path really writes for `precision`, in words (the manifest's quantization.scheme)."""
    if precision.bits is None:
        return precision.float_type
    parts = [f"optimum-onnx export; MatMulNBits {precision.bits}-bit block {precision.block_size} asymmetric"]
    if precision.bits == 4 and precision.eight_bit:
        parts.append("8-bit " + "/".join(precision.eight_bit))
    if precision.bits == 4 and precision.eight_bit_ends:
        parts.append("8-bit " + "/".join(precision.eight_bit_ends)
                     + " in the first and last quarter of the layers")
    parts.append(f"lm_head and GatherBlockQuantized embedding {_head_bits(precision)}-bit")
    parts.append("no activation-aware scaling (it needs edgekit's own graph)")
    return "; ".join(parts)


def _head_bits(precision) -> int:
    return precision.head_bits or precision.bits


def _untie_head(model):
    """optimum may export a tied lm_head as MatMul(x, Transpose(embedding)) (Gemma-2 does), which
    onnxruntime's quantizer skips (no constant weight), leaving the largest matrix in float: give the
    MatMul its own transposed copy. (Others, SmolLM2 among them, get a separate initializer.)"""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    transposes = {n.output[0]: n for n in model.graph.node
                  if n.op_type == "Transpose" and n.input[0] in inits and len(inits[n.input[0]].dims) == 2
                  and all(list(a.ints) in ([], [1, 0]) for a in n.attribute if a.name == "perm")}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[1] in transposes:
            source = transposes[node.input[1]]
            name = source.input[0] + ".T"
            if name not in inits:
                array = numpy_helper.to_array(inits[source.input[0]])
                inits[name] = numpy_helper.from_array(array.T.copy(), name)
                model.graph.initializer.append(inits[name])
            node.input[1] = name
    used = {i for n in model.graph.node for i in n.input}
    for out, node in transposes.items():
        if out not in used:
            model.graph.node.remove(node)
    return model


def _wide(node_name: str, precision, n_layers: int | None) -> bool:
    """Whether a MatMul keeps 8 bits in an int4 model: the same choice as edgekit's own graphs
    (precision's 8-bit projections and the lm_head), matched on optimum's node names such as
    /model/layers.0/self_attn/v_proj/MatMul and /lm_head/MatMul."""
    import re

    if precision.bits != 4:
        return False
    if precision.head_bits == 8 and "lm_head" in node_name:
        return True
    layer = re.search(r"layers?\.(\d+)", node_name)
    if layer is None or not n_layers:  # outside any numbered layer: counted as an end layer (8 bits)
        return precision.widened(node_name)
    return precision.widened(node_name, int(layer.group(1)), n_layers)


def _quantize(model, precision, n_layers: int | None):
    import logging

    require("onnx_ir", "onnx-ir", "optimum", "onnxruntime's MatMulNBits quantizer")

    from onnxruntime.quantization.matmul_nbits_quantizer import (
        DefaultWeightOnlyQuantConfig,
        MatMulNBitsQuantizer,
    )

    wide = [n.name for n in model.graph.node if n.op_type == "MatMul" and _wide(n.name, precision, n_layers)]
    # nodes_to_exclude restricts a pass (nodes_to_include did not, onnxruntime 1.32): the narrow
    # pass skips the wide nodes, then a second pass takes every MatMul still in float at 8 bits
    passes = [(precision.bits, wide)] + ([(8, [])] if wide else [])
    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    log.setLevel(logging.WARNING)  # it logs every node it visits at INFO
    try:
        for bits, exclude in passes:
            config = DefaultWeightOnlyQuantConfig(block_size=precision.block_size, is_symmetric=False,
                                                  accuracy_level=precision.accuracy_level, bits=bits,
                                                  op_types_to_quantize=("MatMul",),
                                                  quant_axes=(("MatMul", 0),))
            quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=exclude)
            quantizer.process()
            model = quantizer.model.model
    finally:
        log.setLevel(level)
    return model


def _quantize_embedding(model, precision) -> None:
    """The token embedding as GatherBlockQuantized at the model's bits (onnxruntime's quantizer does
    Gather at 4 bits only): our own block quantizer, the layout edgekit's native graphs use."""
    from onnx import helper, numpy_helper

    from .onnx_quant import quantize_blockwise

    inits = {t.name: t for t in model.graph.initializer}
    done: set[str] = set()
    for index, node in enumerate(list(model.graph.node)):
        if node.op_type != "Gather" or node.input[1] != "input_ids" or node.input[0] not in inits:
            continue
        table = inits[node.input[0]]
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        if len(table.dims) != 2 or axis != 0:
            continue
        base = node.input[0]
        if base not in done:
            q = quantize_blockwise(numpy_helper.to_array(table).astype("float32"), _head_bits(precision),
                                   precision.block_size)
            model.graph.initializer.extend([
                numpy_helper.from_array(q.packed.reshape(q.n, -1), base + ".q"),
                numpy_helper.from_array(q.scales.reshape(q.n, -1), base + ".scales"),
                numpy_helper.from_array(q.zero_points.reshape(q.n, -1), base + ".zp"),
            ])
            done.add(base)
        gathered = helper.make_node("GatherBlockQuantized",
                                    [base + ".q", node.input[1], base + ".scales", base + ".zp"],
                                    list(node.output), name=node.name + "_q", domain="com.microsoft",
                                    gather_axis=0, quantize_axis=1, block_size=precision.block_size,
                                    bits=_head_bits(precision))
        model.graph.node.remove(node)
        model.graph.node.insert(index, gathered)
    for base in done:
        if not any(base in n.input for n in model.graph.node):
            model.graph.initializer.remove(inits[base])


def _weights(model) -> tuple[int, dict[str, int]]:
    """Bytes of every initializer, and weight matrices counted by storage kind."""
    import numpy as np
    from onnx import TensorProto

    sizes = {TensorProto.FLOAT: 4, TensorProto.FLOAT16: 2, TensorProto.BFLOAT16: 2, TensorProto.INT64: 8,
             TensorProto.INT32: 4, TensorProto.UINT8: 1, TensorProto.INT8: 1}
    total = sum(int(np.prod(t.dims)) * sizes.get(t.data_type, 4) for t in model.graph.initializer)
    kinds: dict[str, int] = {}
    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16"}
    weight_input = {"MatMulNBits": 1, "GatherBlockQuantized": 0}  # which input holds the packed weight
    packed, side = {}, set()
    for n in model.graph.node:
        if n.op_type in weight_input:
            packed[n.input[weight_input[n.op_type]]] = next((a.i for a in n.attribute if a.name == "bits"), 4)
            side.update(n.input)
    for t in model.graph.initializer:
        if t.name in packed:
            kind = f"int{packed[t.name]}"
        elif t.name not in side and len(t.dims) == 2 and t.data_type in names and min(t.dims) > 1:
            kind = names[t.data_type]
        else:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
    return total, kinds


def _facts(ckpt: Checkpoint, model, task: str) -> dict[str, Any]:
    """What a runtime needs, read from the exported graph itself."""
    from onnx import TensorProto

    cfg = ckpt.config
    inputs = {i.name: i for i in model.graph.input}
    context = int(cfg.get("max_position_embeddings") or cfg.get("n_positions") or 512)
    served = ({"input_ids", "attention_mask", "token_type_ids"} if task == "feature-extraction"
              else {"input_ids", "attention_mask", "position_ids"})
    unserved = [n for n in inputs if n not in served and not n.startswith("past_key_values.")]
    if unserved:
        raise ConversionError(f"{ckpt.path}: optimum's graph takes inputs edgekit's runtime does not feed "
                              f"({', '.join(unserved)})")
    if task == "feature-extraction":
        from .source import sentence_pooling

        return {"inputs": list(inputs), "outputs": [o.name for o in model.graph.output],
                "context_length": context, "pooling": sentence_pooling(ckpt)}
    past = [n for n in inputs if n.startswith("past_key_values.")]
    if not past:
        raise ConversionError(f"{ckpt.path}: optimum's export has no KV cache inputs; cannot decode with it")
    first = inputs["past_key_values.0.key"].type.tensor_type
    dims = [d.dim_value for d in first.shape.dim]
    return {
        "num_layers": len(past) // 2, "num_kv_heads": dims[1], "head_dim": dims[3],
        "vocab_size": int(cfg["vocab_size"]), "context_length": context,
        "kv_dtype": "float16" if first.elem_type == TensorProto.FLOAT16 else "float32",
        "kv_layout": "concat", "inputs": list(inputs), "outputs": [o.name for o in model.graph.output],
    }
