"""Build the optimum anchor: optimum-onnx's export of a checkpoint with
its KV cache, then onnxruntime's MatMulNBits int4 quantizer as people usually run it (block 32,
asymmetric, accuracy level 4, default node selection, so a tied lm_head stays fp32). The result
loads with optimum.onnxruntime.ORTModelForCausalLM; bench/decode_bench.py --optimum runs it.

    python bench/optimum_anchor.py CHECKPOINT_DIR OUTPUT_DIR
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint", type=Path)
    ap.add_argument("output", type=Path)
    args = ap.parse_args()

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer
    from optimum.exporters.onnx import main_export

    start = time.perf_counter()
    work = args.output.with_name(args.output.name + ".fp32")
    shutil.rmtree(work, ignore_errors=True)
    main_export(str(args.checkpoint), output=str(work), task="text-generation-with-past", device="cpu",
                do_validation=False)
    exported = time.perf_counter()
    quantizer = MatMulNBitsQuantizer(onnx.load(str(work / "model.onnx")), bits=4, block_size=32,
                                     is_symmetric=False, accuracy_level=4)
    quantizer.process()
    shutil.rmtree(args.output, ignore_errors=True)
    shutil.copytree(work, args.output, ignore=shutil.ignore_patterns("model.onnx*"))
    quantizer.model.save_model_to_file(str(args.output / "model.onnx"), use_external_data_format=False)
    shutil.rmtree(work)
    size = sum(p.stat().st_size for p in args.output.glob("model.onnx*")) / 1e6
    print(f"built {args.output}: export {exported - start:.1f} s, "
          f"int4 {time.perf_counter() - exported:.1f} s, {size:.0f} MB")


if __name__ == "__main__":
    main()
