"""Conversion wall time and peak RSS: edgekit vs llama.cpp's convert_hf_to_gguf.py (+ quantize).

Also, when its venv exists, edgekit's ONNX int4 against onnxruntime-genai's model builder.

Interleaved runs (ours, reference, ours, reference ...), medians, ratios in one run, on the
bundled SmolLM2-135M-Instruct (fp32 safetensors, 540 MB). Each conversion runs in a fresh process;
peak RSS is that process's own maximum resident set (os.wait4). The reference's Q4_K_M pipeline is
two processes, as a user runs it: convert_hf_to_gguf.py --outtype f16, then llama.cpp's quantizer
(llama_model_quantize, the code behind llama-quantize); its time is the sum, its peak the larger.

    python bench/convert_bench.py [--runs 3] [--json bench/results/convert.json]
needs EDGEKIT_REFERENCE_LLAMA_CPP (scripts/fetch-reference.sh prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUANTIZE = (
    "import sys, llama_cpp; p = llama_cpp.llama_model_quantize_default_params(); p.ftype = 15; p.nthread = 2;"
    "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), p))"
)


def measure(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one child process."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    ref_root = os.environ.get("EDGEKIT_REFERENCE_LLAMA_CPP")
    if not ref_root:
        raise SystemExit("set EDGEKIT_REFERENCE_LLAMA_CPP=$(bash scripts/fetch-reference.sh)")
    from edgekit import bundled

    src = bundled.path("smollm2-135m-instruct")
    py = sys.executable
    ref_env = {**os.environ, "PYTHONPATH": str(Path(ref_root) / "gguf-py")}
    env = dict(os.environ)
    work = Path(tempfile.mkdtemp(prefix="ek-bench-"))
    ref_convert = [py, str(Path(ref_root) / "convert_hf_to_gguf.py"), str(src), "--outtype", "f16"]

    def ours(quant: str) -> tuple[float, float]:
        out = work / f"ours-{quant}"
        shutil.rmtree(out, ignore_errors=True)
        return measure([py, "-m", "edgekit.cli", "convert", "bundled:smollm2-135m-instruct", "--quant", quant,
                        "-o", str(out), "--json"], env)

    def reference(quant: str) -> tuple[float, float]:
        f16 = work / "ref-f16.gguf"
        wall, rss = measure([*ref_convert, "--outfile", str(f16)], ref_env)
        if quant == "Q4_K_M":
            w2, r2 = measure([py, "-c", QUANTIZE, str(f16), str(work / "ref-q4km.gguf")], env)
            wall, rss = wall + w2, max(rss, r2)
        return wall, rss

    def ours_onnx(quant: str) -> tuple[float, float]:
        out = work / "ours-onnx"
        shutil.rmtree(out, ignore_errors=True)
        return measure([py, "-m", "edgekit.cli", "convert", "bundled:smollm2-135m-instruct", "--to", "onnx",
                        "--quant", "int4", "-o", str(out), "--json"], env)

    def genai(quant: str) -> tuple[float, float]:
        out = work / "genai"
        shutil.rmtree(out, ignore_errors=True)
        return measure([str(genai_py), "-m", "onnxruntime_genai.models.builder", "-i", str(src),
                        "-m", str(src), "-o", str(out), "-p", "int4", "-e", "cpu",
                        "-c", str(work / "genai-cache")], env)

    cases = [("edgekit", "F16", ours), ("llama.cpp", "F16", reference),
             ("edgekit", "Q4_K_M", ours), ("llama.cpp", "Q4_K_M", reference)]
    # onnxruntime-genai's builder needs transformers 5, so it lives in a venv of its own:
    #   python -m venv $GENAI_ANCHOR_VENV
    #   $GENAI_ANCHOR_VENV/bin/pip install onnxruntime-genai transformers torch
    genai_py = Path(os.environ.get("GENAI_ANCHOR_VENV",
                                   Path(tempfile.gettempdir()) / "genai-anchor-venv")) / "bin/python"
    if genai_py.exists():
        cases += [("edgekit", "ONNX int4", ours_onnx), ("onnxruntime-genai", "ONNX int4", genai)]
    samples: dict[tuple[str, str], list[tuple[float, float]]] = {(n, q): [] for n, q, _ in cases}
    ours("F16")  # warm the page cache and the bundled model before measuring
    for _ in range(args.runs):
        for name, quant, fn in cases:
            samples[(name, quant)].append(fn(quant))
    shutil.rmtree(work, ignore_errors=True)

    rows = {}
    for (name, quant), values in samples.items():
        rows[f"{name} {quant}"] = {"wall_s": statistics.median(v[0] for v in values),
                                   "peak_rss_mb": statistics.median(v[1] for v in values),
                                   "runs": len(values)}
    anchors = {"F16": "llama.cpp", "Q4_K_M": "llama.cpp", "ONNX int4": "onnxruntime-genai"}
    ratios = {q: {"time": rows[f"edgekit {q}"]["wall_s"] / rows[f"{a} {q}"]["wall_s"],
                  "rss": rows[f"edgekit {q}"]["peak_rss_mb"] / rows[f"{a} {q}"]["peak_rss_mb"]}
              for q, a in anchors.items() if f"{a} {q}" in rows}
    print(f"{'case':<22}{'wall s (median)':>18}{'peak RSS MB':>14}")
    for key, row in rows.items():
        print(f"{key:<22}{row['wall_s']:>18.2f}{row['peak_rss_mb']:>14.0f}")
    for q, r in ratios.items():
        print(f"edgekit / {anchors[q]} {q}: time {r['time']:.2f}x, peak RSS {r['rss']:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=2))


if __name__ == "__main__":
    main()
