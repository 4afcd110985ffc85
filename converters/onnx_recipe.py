"""The ONNX quantization recipe: how each weight is stored at fp32, fp16, int8 and int4.

One Precision per name. For a quantized model, `layer_spec` is the one predicate that says how many
bits (and what block size) each layer matrix gets, and `head_spec` does the same for the embedding
and lm_head. The figures behind each choice, and the commands that reproduce them, are in
docs/measurements.md; here the comments say what each field does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgekit.errors import ConversionError

from .onnx_quant import GPTQ_DAMPING


@dataclass(frozen=True)
class Precision:
    """How weights are stored. bits None = float (dtype); otherwise MatMulNBits per tensor."""

    name: str  # fp32, fp16, int8, int4
    float_type: str  # activations and float weights: "float32" or "float16"
    bits: int | None = None
    block_size: int = 32
    accuracy_level: int = 4  # CPU: int8 activations inside the 4-bit kernels
    # Tensors kept at 8 bits in an int4 model: the ones whose error reaches the output most directly
    # (v, o, down) and k, the cheapest to widen for what it gains (its error reaches every query head
    # of its group).
    eight_bit: tuple[str, ...] = ()
    # 8 bits only in the first and last quarter of the layers, 4 bits between: their errors cost the
    # most at the ends (llama.cpp's Q4_K_M widens ffn_down at the ends too).
    eight_bit_ends: tuple[str, ...] = ()
    # Blocks of 8-bit tensors: the largest power of two up to this that divides K. Their weight error
    # is negligible at any block size, but accuracy level 4 quantizes the activations per block too,
    # so wider blocks do cost something (worth it in int4, not in int8).
    eight_bit_block: int | None = None
    symmetric_eight_bit: bool = False  # 8-bit tensors without zero points (8 bits per block less)
    head_bits: int | None = None  # embedding / lm_head bits when they differ from `bits`
    # float16 scales for the 4-bit tensors in a float32 graph: 0.5 bit per weight less at block 32.
    # MatMulNBits takes scales in its input type, so inputs are cast to float16 and results back;
    # the residual stream, attention and KV cache stay float32. The 8-bit layer tensors keep float32
    # scales: 0.125-0.25 bit less would cost two casts each (per-node cost shows in decode).
    half_scales: bool = False
    # float16 scales for the embedding / lm_head: one cast of the token vectors and one of the
    # logits per step, 0.25 bit per weight less at 8 bits in blocks of 64
    half_scale_head: bool = False
    # Activation-aware scaling before quantizing (AWQ without its search): each linear layer's input
    # channels are scaled by mean|activation|^alpha, measured by running our own fp32 graph on a
    # short built-in text, and the inverse is folded into the op before (norm weight, up or v rows).
    # The fp32 function is unchanged; quantization error moves off the channels that matter.
    awq_alpha: float | None = None
    # Search each 4-bit block's scale and zero point for the least error weighted by its inputs'
    # mean square on the same text, instead of min/max.
    scale_search: bool = False
    # Round the 4-bit matrices block by block, each block's output error on the same text re-fit by
    # the blocks after it (GPTQ; onnx_quant.quantize_gptq), each block's scale still searched.
    gptq: bool = False
    # Add each 4-bit projection's mean output error, (W - dequant(W)) @ mean(x) over the same text,
    # back as MatMulNBits' bias. Off: with GPTQ it gains nothing measurable, and onnxruntime's CUDA
    # MatMulNBits rejected a bias before 1.28.
    bias_correction: bool = False

    @property
    def scheme(self) -> str:
        """What was really chosen, in words (the manifest's quantization.scheme)."""
        if self.bits is None:
            return self.float_type
        parts = [f"MatMulNBits {self.bits}-bit block {self.block_size} asymmetric"]
        if self.half_scales:
            parts.append(f"float16 scales for {self.bits}-bit")
        how = ", ".join(["symmetric"] * self.symmetric_eight_bit
                        + [f"block up to {self.eight_bit_block}"] * bool(self.eight_bit_block))
        wide = f" ({how})" if how else ""
        tensors = list(self.eight_bit) + [f"{t} in the first and last quarter of the layers"
                                          for t in self.eight_bit_ends]
        if tensors:
            parts.append("8-bit" + wide + ": " + ", ".join(tensors))
        parts.append(f"embedding+lm_head {self.head_bits or self.bits}-bit"
                     + (wide if self.head_bits == 8 else "")
                     + (" with float16 scales" if self.half_scale_head else ""))
        if self.awq_alpha is not None:
            parts.append(f"activation-aware scaling alpha {self.awq_alpha}")
        if self.gptq:
            parts.append(f"{self.bits}-bit blocks rounded by GPTQ (damping {GPTQ_DAMPING:g})")
        if self.scale_search:
            parts.append(f"{self.bits}-bit scales searched for the least activation-weighted error")
        if self.bias_correction:
            parts.append(f"{self.bits}-bit mean output error corrected by a bias")
        return "; ".join(parts)

    def widened(self, name: str, layer: int = 0, n_layers: int = 1) -> bool:
        """Whether an int4 model keeps layer matrix `name` (in layer `layer` of n_layers) at 8 bits."""
        return self.bits == 4 and (any(tag in name for tag in self.eight_bit) or (
            any(tag in name for tag in self.eight_bit_ends) and at_ends(layer, n_layers)))

    def layer_spec(self, name: str, k: int, layer: int = 0, n_layers: int = 1) -> tuple[int, int]:
        """(bits, block size) of the quantized matrix `name` (k input features) in layer `layer`."""
        bits = 8 if self.widened(name, layer, n_layers) else self.bits
        return bits, self._wide_block(k) if bits == 8 else self.block_size

    def head_spec(self, k: int) -> tuple[int, int]:
        """(bits, block size) of the embedding and lm_head."""
        bits = self.head_bits or self.bits
        return bits, self._wide_block(k) if bits == 8 else self.block_size

    def scale_dtype(self, bits: int, head: bool = False) -> type:
        """The numpy type the scales of a `bits`-bit matrix (the embedding/lm_head: head) are stored in."""
        half = self.half_scale_head if head else self.half_scales and bits == 4
        return np.float16 if half or self.float_type == "float16" else np.float32

    def symmetric(self, bits: int) -> bool:
        """Whether tensors stored at `bits` go without zero points."""
        return self.symmetric_eight_bit and bits == 8

    def _wide_block(self, k: int) -> int:
        block = self.eight_bit_block or self.block_size
        while block > self.block_size and k % block:
            block //= 2
        return block


def at_ends(layer: int, n_layers: int) -> bool:
    """Whether `layer` is in the first or last quarter of n_layers (at least one layer each end)."""
    return min(layer, n_layers - 1 - layer) < max(1, n_layers // 4)


PRECISIONS = {
    "fp32": Precision("fp32", "float32"),
    "fp16": Precision("fp16", "float16"),
    # int8: blocks of 32, float32 scales, int8 activations in the kernels (accuracy level 4)
    "int8": Precision("int8", "float32", bits=8),
    # int4: 4-bit blocks of 32 with float16 scales, fitted on the calibration text (activation-aware
    # scaling, GPTQ rounding, searched scales); k/v/o, down at the ends, the embedding and lm_head at 8
    # bits. Quality first: "int4" must not buy size with quality.
    "int4": Precision("int4", "float32", bits=4, eight_bit=("k_proj", "v_proj", "o_proj"),
                      eight_bit_ends=("down_proj",), eight_bit_block=128, symmetric_eight_bit=True,
                      head_bits=8, awq_alpha=0.5, half_scales=True, half_scale_head=True, scale_search=True,
                      gptq=True),
}
ALIASES = {"float32": "fp32", "f32": "fp32", "float16": "fp16", "f16": "fp16", "q8": "int8", "q4": "int4"}


def onnx_precision(name: str) -> Precision:
    key = ALIASES.get(name.lower(), name.lower())
    if key not in PRECISIONS:
        raise ConversionError(f"unknown ONNX quantization '{name}'; use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[key]
