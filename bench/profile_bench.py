"""Does `edgekit profile` measure what is there? Against independent measurements of the same files.

    .venv/bin/python bench/profile_bench.py [--rounds 3] [--gen 128]

For SmolLM2-135M-Instruct GGUF int4 and ONNX int4 (converted here): decode tok/s from the
profiler, and from a raw loop outside edgekit (llama-cpp-python's own generate; onnxruntime
fed with numpy, one session.run per token), interleaved round by round, medians; their ratio is
the profiler's agreement and its overhead. Both sides use every core (edgekit's default).
Then each variant's peak RSS from the profiler against
what /usr/bin/time reports for the profiler's own child, started alone, doing the same load
and generation (two 256-token runs after a warm-up). Last, the profile table
of the variants (the one in the README).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import edgekit

PROMPT = 64

RAW_GGUF = """
import os, sys, time
from llama_cpp import Llama
from edgekit.quality.eval_text import TEXT
llm = Llama(model_path=sys.argv[1], n_ctx=1024, verbose=False, n_threads=os.cpu_count(),
            n_threads_batch=os.cpu_count())
ids = llm.tokenize(TEXT.encode(), add_bos=True)[:{prompt}]
times = []
for n, token in enumerate(llm.generate(ids, temp=0.0, top_k=1, reset=True)):
    times.append(time.perf_counter())
    if n + 1 == {gen}:
        break
print((len(times) - 1) / (times[-1] - times[0]))
"""

RAW_ONNX = """
import os, sys, time, json
import numpy as np, onnxruntime as ort
from tokenizers import Tokenizer
from edgekit.quality.eval_text import TEXT
root = sys.argv[1]
facts = json.load(open(root + "/edgekit.json"))["onnx"]
options = ort.SessionOptions()
options.intra_op_num_threads = os.cpu_count()
sess = ort.InferenceSession(root + "/model.onnx", options, providers=["CPUExecutionProvider"])
names = [i.name for i in sess.get_inputs()]
kv = [n for n in names if n.startswith("past_key_values.")]
kv_type = np.float16 if facts.get("kv_dtype") == "float16" else np.float32
past = {{n: np.zeros((1, facts["num_kv_heads"], 0, facts["head_dim"]), kv_type) for n in kv}}
ids = Tokenizer.from_file(root + "/tokenizer.json").encode(TEXT).ids[:{prompt}]
outputs = [o.name for o in sess.get_outputs()]
step, length, times = ids, 0, []
for _ in range({gen}):
    length += len(step)
    feeds = {{"input_ids": np.array([step], np.int64), **past,
             "attention_mask": np.ones((1, length), np.int64)}}
    if "position_ids" in names:
        feeds["position_ids"] = np.arange(length - len(step), length, dtype=np.int64)[None]
    if "logits_to_keep" in names:
        feeds["logits_to_keep"] = np.ones(1, np.int64)
    result = dict(zip(outputs, sess.run(outputs, feeds)))
    past = {{n.replace("present.", "past_key_values."): v
             for n, v in result.items() if n.startswith("present.")}}
    step = [int(result["logits"][0, -1].argmax())]
    times.append(time.perf_counter())
print((len(times) - 1) / (times[-1] - times[0]))
"""

# what the profiler's child does for one variant, as its own process under /usr/bin/time
CHILD_COMMANDS = """["run", 256, {gen}, 400]
["run", 256, {gen}, 0]
["run", 256, {gen}, 17]
["stop"]
"""


def raw_tok_s(kind: str, artifact: Path, gen: int) -> float:
    manifest = edgekit.read_manifest(artifact)
    code = (RAW_GGUF if kind == "gguf" else RAW_ONNX).format(prompt=PROMPT, gen=gen)
    target = str(artifact / manifest["model_file"]) if kind == "gguf" else str(artifact)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code), target], capture_output=True,
                         text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def time_rss_mb(artifact: Path, gen: int) -> float:
    child = [sys.executable, "-m", "edgekit.quality.profiler_child", str(artifact), "cpu", "0"]
    out = subprocess.run(["/usr/bin/time", "-v", *child], input=CHILD_COMMANDS.format(gen=gen),
                         capture_output=True, text=True, check=True)
    kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return kib * 1024 / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--gen", type=int, default=128)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        arts = {fmt: edgekit.convert("bundled:smollm2-135m-instruct", to=fmt, quant="int4",
                                     output=root / f"{fmt}-int4", verify=False).path
                for fmt in ("gguf", "onnx")}
        arts["gguf-int8"] = edgekit.convert("bundled:smollm2-135m-instruct", to="gguf", quant="int8",
                                            output=root / "gguf-int8", verify=False).path
        ours: dict[str, list[float]] = {k: [] for k in ("gguf", "onnx")}
        raw: dict[str, list[float]] = {k: [] for k in ("gguf", "onnx")}
        for _ in range(args.rounds):  # interleaved: drift hits both alike
            for fmt in ("gguf", "onnx"):
                report = edgekit.profile([arts[fmt]], prompt_tokens=PROMPT, gen_tokens=args.gen, runs=1,
                                         devices=["cpu"])
                ours[fmt].append(report.variants[0].decode["avg_ts"])
                raw[fmt].append(raw_tok_s(fmt, arts[fmt], args.gen))
        table = edgekit.profile(list(arts.values()), prompt_tokens=256, gen_tokens=args.gen,
                                runs=2, devices=["cpu"])
        rss = {fmt: (v.peak_rss_mb, time_rss_mb(arts[fmt], args.gen))
               for fmt, v in zip(arts, table.variants, strict=True)}
    result = {
        "decode": {fmt: {"profile": statistics.median(ours[fmt]), "raw": statistics.median(raw[fmt]),
                         "ratio": statistics.median(ours[fmt]) / statistics.median(raw[fmt])}
                   for fmt in ours},
        "rss_mb": {fmt: {"profile": a, "usr_bin_time": b, "ratio": a / b} for fmt, (a, b) in rss.items()},
        "table": table.markdown(),
    }
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for fmt, d in result["decode"].items():
        print(f"{fmt} int4 decode: profile {d['profile']:.1f} tok/s, raw {d['raw']:.1f} tok/s, "
              f"ratio {d['ratio']:.3f}")
    for fmt, d in result["rss_mb"].items():
        print(f"{fmt} peak RSS: profile {d['profile']:.0f} MB, /usr/bin/time {d['usr_bin_time']:.0f} MB, "
              f"ratio {d['ratio']:.3f}")
    print(result["table"])


if __name__ == "__main__":
    main()
