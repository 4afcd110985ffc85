"""Calibration: one run of a model's own graph over a short built-in text.

What it measures feeds the int4 quantizers: each linear layer's input on every token (the scale
search's importance and GPTQ's Hessian) and activation-aware scaling multipliers, folded into the
op before each layer so the float function is unchanged. The graph is the family's own (a decoder
family or the encoder), built with its weights as inputs and taps on each linear layer's input.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from edgekit.errors import ConversionError

from .onnx_recipe import PRECISIONS, Precision
from .source import Checkpoint


class DecoderFamily(Protocol):
    """What calibration needs of a decoder family (onnx_decoder.LlamaDecoder and its subclasses):
    its shapes, and a way to build its own graph with taps on every linear layer's input."""

    ckpt: Checkpoint
    n_heads: int
    n_kv: int
    head_dim: int
    n_layers: int
    mlp_norm: str
    calibration_precision: ClassVar[str]

    def __init__(self, ckpt: Checkpoint, precision: Precision, taps: bool = False) -> None: ...

    def build(self, out_file: Path) -> dict[str, Any]: ...


# A short, varied text (prose, dialogue, code, numbers, Spanish) for the activation statistics.
CALIBRATION_TEXT = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman and his wife. Every "
    "morning he went out in his boat before sunrise and came back at noon with the day's catch.\n"
    "User: What is the tallest mountain in the world?\nAssistant: Mount Everest, at about 8,849 metres.\n"
    "import os\nfor name in sorted(os.listdir('.')):\n    print(name.upper(), len(name))\n"
    "The mitochondria produce most of the energy a cell uses. "
    "Water boils at 100 degrees Celsius at sea level.\n"
    "Hola, ¿cómo estás? Me gustaría reservar una mesa para dos personas esta noche, por favor."
)


def calibration_ids(ckpt: Checkpoint) -> list[int]:
    """CALIBRATION_TEXT in the checkpoint's tokens: tokenizer.json, else tokenizer.model
    (SentencePiece), else BERT's vocab.txt (WordPiece between [CLS] and [SEP])."""
    if ckpt.has("tokenizer.json"):
        from tokenizers import Tokenizer

        return Tokenizer.from_file(str(ckpt.path / "tokenizer.json")).encode(CALIBRATION_TEXT).ids
    if ckpt.has("tokenizer.model"):
        import sentencepiece as spm

        return spm.SentencePieceProcessor(
            model_file=str(ckpt.path / "tokenizer.model")).EncodeAsIds(CALIBRATION_TEXT)
    if ckpt.has("vocab.txt"):
        from tokenizers import Tokenizer, models, normalizers, pre_tokenizers

        wordpiece = Tokenizer(models.WordPiece.from_file(str(ckpt.path / "vocab.txt"), unk_token="[UNK]"))
        lower = bool((ckpt.json_file("tokenizer_config.json") or {}).get("do_lower_case", True))
        wordpiece.normalizer = normalizers.BertNormalizer(lowercase=lower)
        wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        marks = [wordpiece.token_to_id(t) for t in ("[CLS]", "[SEP]")]
        ids = wordpiece.encode(CALIBRATION_TEXT).ids
        return [marks[0], *ids, marks[1]] if None not in marks else ids
    raise ConversionError(f"{ckpt.path}: no tokenizer.json, tokenizer.model or vocab.txt to tokenize the "
                          "calibration text with; int4 scales are fitted on it (int8 and float need none)")


@dataclass
class Calibration:
    """What one run of our own graph over CALIBRATION_TEXT tells the quantizers."""

    # activation-aware scaling: tensor name -> (column, row) multipliers (empty without awq_alpha)
    multipliers: dict[str, tuple]
    # weight name -> its input on each token [tokens, K], divided by the weight's column multipliers
    # (what the scaled weight sees); matrices sharing an input share the array
    inputs: dict[str, np.ndarray]

    def importance(self, name: str) -> np.ndarray | None:
        """Mean square of each input feature of weight `name` (the scale search's weights)."""
        x = self.inputs.get(name)
        return None if x is None else (x * x).mean(axis=0)


def calibrate(family: DecoderFamily, out_file: Path, precision: Precision) -> Calibration:
    """Each linear layer's input on CALIBRATION_TEXT from the family's own graph, and the
    activation-aware scaling multipliers taken from it.

    Names are the family's canonical (Llama) tensor names; `family.mlp_norm` is the norm before
    the MLP, into which the gate/up multipliers fold.
    """
    ckpt = family.ckpt
    n_heads, n_kv, head_dim = family.n_heads, family.n_kv, family.head_dim
    calib = out_file.with_name(".calibration.onnx")
    try:
        # fp16 weights (the family's calibration_precision): half the memory of an fp32 graph; the
        # statistics need no more precision (an overflow is caught)
        info = type(family)(ckpt, PRECISIONS[family.calibration_precision], taps=True).build(calib)
        weights = info.pop("feeds")
        ids = calibration_ids(ckpt)[: info["context_length"]]
        feeds = {"input_ids": np.array([ids], np.int64), "attention_mask": np.ones((1, len(ids)), np.int64),
                 **weights}
        for i in range(info["num_layers"]):
            for kind in ("key", "value"):
                feeds[f"past_key_values.{i}.{kind}"] = np.zeros((1, n_kv, 0, head_dim), info["kv_type"])
        seen = run_taps(ckpt, calib, feeds)
        del feeds, weights  # the fp16 weights go before the real build reads the checkpoint
    finally:
        calib.unlink(missing_ok=True)

    def scale(x: np.ndarray) -> np.ndarray:
        if precision.awq_alpha is None:
            return np.ones_like(x)
        s = np.power(np.maximum(x, 1e-6), precision.awq_alpha)
        return (s / np.sqrt(s.max() * s.min())).astype(np.float32)

    group = n_heads // n_kv
    out: dict[str, tuple] = {}
    for i in range(family.n_layers):
        p, a, m = f"model.layers.{i}.", f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
        s_qkv, s_gu, s_down = (scale(np.abs(seen[f"tap.{i}.{k}"]).mean(axis=0))
                               for k in ("qkv", "gate_up", "down"))
        # o_proj's input is a mix of v rows per kv head: heads sharing a kv head share one scale
        s_kv = (scale(np.abs(seen[f"tap.{i}.o"]).mean(axis=0))
                .reshape(n_kv, group, head_dim).mean(axis=1).reshape(-1))
        s_o = np.repeat(s_kv.reshape(n_kv, head_dim), group, axis=0).reshape(-1)
        out[p + "input_layernorm.weight"] = (1 / s_qkv, None)
        out[a + "q_proj.weight"] = (s_qkv, None)
        out[a + "k_proj.weight"] = (s_qkv, None)
        out[a + "v_proj.weight"] = (s_qkv, 1 / s_kv)
        out[a + "v_proj.bias"] = (None, 1 / s_kv)
        out[a + "o_proj.weight"] = (s_o, None)
        out[p + family.mlp_norm + ".weight"] = (1 / s_gu, None)
        out[m + "gate_proj.weight"] = (s_gu, None)
        out[m + "up_proj.weight"] = (s_gu, 1 / s_down)
        out[m + "down_proj.weight"] = (s_down, None)
    # the inputs the quantized matrices see are divided by their column multipliers
    taps = {"q_proj": "qkv", "k_proj": "qkv", "v_proj": "qkv", "o_proj": "o", "gate_proj": "gate_up",
            "up_proj": "gate_up", "down_proj": "down"}
    inputs: dict[str, np.ndarray] = {}
    for i in range(family.n_layers):
        scaled: dict[str, np.ndarray] = {}  # tap -> its input as the scaled weights see it
        for proj, tap in taps.items():
            name = f"model.layers.{i}.{'self_attn' if proj[0] in 'qkvo' else 'mlp'}.{proj}.weight"
            if tap not in scaled:  # projections of one tap share one column multiplier
                scaled[tap] = seen.pop(f"tap.{i}.{tap}") / out[name][0]
            inputs[name] = scaled[tap]
    return Calibration(out if precision.awq_alpha is not None else {}, inputs)


def run_taps(ckpt: Checkpoint, graph: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a calibration graph once and return its outputs (first batch row, float32). No graph
    optimization: one short run does not repay it. Activations that overflow float16 stop the
    conversion: statistics of them would be garbage."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    seen = {}
    for name, value in zip(names, sess.run(names, feeds), strict=True):
        seen[name] = value[0].astype(np.float32)
        if not np.isfinite(seen[name]).all():
            raise ConversionError(f"{ckpt.path}: activations overflow float16 at {name} on the calibration "
                                  "text; use --quant int8 or fp32 for this model")
    return seen
