"""Decode speed and TTFT: edgekit's runtimes against the raw engines underneath and the anchors.

The shape of the anchors in docs/measurements.md: a ~176-token chat prompt, 64 greedy tokens, warm-up first, \
runs
interleaved in an order that flips every run (A B C, C B A ...), medians, ratios in one run, and each as a \
share of the memory-
bandwidth limit (decode reads every weight once per token: tok/s <= bandwidth / weight bytes).

  GGUF Q4_K_M: edgekit.load(...).generate  vs  raw llama_cpp.Llama on the same file
  ONNX int4:   edgekit (our graph, IO binding)  vs  onnxruntime-genai on its own int4 model
               (built by onnxruntime-genai's model builder in a venv of its own, as
               bench/convert_bench.py describes; its runtime needs
               `.venv/bin/pip install onnxruntime-genai`; skipped when --genai is not given)
               and vs optimum's ORTModelForCausalLM on its export + MatMulNBits int4
               (built by bench/optimum_anchor.py; skipped when --optimum is not given)
  --onnx-fallback: an edgekit artifact made with exporter="optimum" (optimum's graph, our loop)

    python bench/decode_bench.py --gguf out/smol-q4 --onnx out/smol-onnx [--genai /tmp/genai-int4]
        [--optimum /tmp/optimum-int4]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

SYSTEM = ("You are a careful assistant who writes short, factual answers. You never invent facts, you say "
          "when you are unsure, and you prefer plain words to jargon. When asked about history, give dates; "
          "when asked about science, give the mechanism in one or two sentences.")
QUESTION = ("I am preparing a short talk for a local library about how printing changed Europe. Could you "
            "explain, in a few sentences, what Johannes Gutenberg invented, roughly when, and why movable "
            "type mattered so much for the spread of books, literacy and new ideas across the continent? "
            "Please keep it simple enough for a general audience and mention one concrete example of a "
            "famous early book.")
N_TOKENS = 64


def bandwidth_gbs() -> float:
    a = np.ones(64 * 1024 * 1024 // 8)  # 64 MB
    b = np.empty_like(a)
    best = min(_time(lambda: np.copyto(b, a)) for _ in range(10))
    return 2 * a.nbytes / best / 1e9  # read + write


def _time(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def edgekit_run(engine, prompt_text: str) -> tuple[float, float]:
    if hasattr(engine.backend, "_llm"):
        engine.backend._llm.reset()  # measure a fresh prefill, not llama-cpp-python's prefix cache
    # all engines generate exactly N_TOKENS: the raw loops do not stop at EOS either
    r = engine.generate(prompt_text, max_tokens=N_TOKENS, temperature=0, add_special=False, ignore_eos=True)
    return r.decode_tok_s, r.ttft_s


def raw_llama_run(llm, prompt_text: str) -> tuple[float, float]:
    llm.reset()
    start = time.perf_counter()  # TTFT counts tokenization (docs/architecture.md), as edgekit's does
    ids = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    first = None
    n = 0
    for _tok in llm.generate(ids, temp=0.0, top_k=1, reset=True):
        n += 1
        if first is None:
            first = time.perf_counter()
        if n >= N_TOKENS:
            break
    end = time.perf_counter()
    return (n - 1) / (end - first), first - start


def genai_run(og, model, tokenizer, prompt_text: str) -> tuple[float, float]:
    start = time.perf_counter()
    tokens = tokenizer.encode(prompt_text)
    params = og.GeneratorParams(model)
    # min_length: no stop at EOS before N_TOKENS, like the other engines here
    params.set_search_options(max_length=4096, min_length=len(tokens) + N_TOKENS, do_sample=False)
    gen = og.Generator(model, params)
    gen.append_tokens(tokens)
    first, n = None, 0
    while not gen.is_done() and n < N_TOKENS:
        gen.generate_next_token()
        n += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return (n - 1) / (end - first), first - start


def optimum_run(model, tokenizer, prompt_text: str) -> tuple[float, float]:
    import torch
    from transformers.generation.streamers import BaseStreamer

    class Clock(BaseStreamer):  # put() gets the prompt first, then each new token
        def __init__(self) -> None:
            self.times: list[float] = []

        def put(self, value) -> None:
            self.times.append(time.perf_counter())

        def end(self) -> None:
            pass

    clock = Clock()
    start = time.perf_counter()
    ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    model.generate(torch.tensor([ids]), attention_mask=torch.ones((1, len(ids)), dtype=torch.long),
                   max_new_tokens=N_TOKENS, min_new_tokens=N_TOKENS, do_sample=False, streamer=clock)
    first, end = clock.times[1], clock.times[-1]
    return (len(clock.times) - 2) / (end - first), first - start


def main() -> None:
    import edgekit

    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", type=Path, required=True)
    ap.add_argument("--onnx", type=Path, required=True)
    ap.add_argument("--genai", type=Path, default=None)
    ap.add_argument("--optimum", type=Path, default=None)
    ap.add_argument("--onnx-fallback", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    gguf_engine = edgekit.load(args.gguf, device="cpu")
    onnx_engine = edgekit.load(args.onnx, device="cpu")
    prompt = gguf_engine.render_chat([{"role": "system", "content": SYSTEM},
                                      {"role": "user", "content": QUESTION}])
    # The raw side drives the very Llama object edgekit's backend holds: two identical Llama objects in
    # one process differed by up to 7% in decode tok/s here (memory placement), which would swamp the
    # wrapper's own cost, the thing this ratio measures.
    raw = gguf_engine.backend._llm
    ids = raw.tokenize(prompt.encode(), add_bos=False, special=True)
    cases = {
        "edgekit gguf": lambda: edgekit_run(gguf_engine, prompt),
        "llama-cpp-python": lambda: raw_llama_run(raw, prompt),
        "edgekit onnx": lambda: edgekit_run(onnx_engine, prompt),
    }
    weights = {"edgekit gguf": (args.gguf / gguf_engine.manifest["model_file"]).stat().st_size,
               "llama-cpp-python": (args.gguf / gguf_engine.manifest["model_file"]).stat().st_size,
               "edgekit onnx": sum(p.stat().st_size for p in args.onnx.glob("model.onnx*"))}
    if args.genai and args.genai.is_dir():
        import onnxruntime_genai as og

        gmodel = og.Model(str(args.genai))
        gtok = og.Tokenizer(gmodel)
        cases["onnxruntime-genai"] = lambda: genai_run(og, gmodel, gtok, prompt)
        weights["onnxruntime-genai"] = sum(p.stat().st_size for p in args.genai.glob("*.onnx*"))
    if args.onnx_fallback:
        fallback_engine = edgekit.load(args.onnx_fallback, device="cpu")
        cases["edgekit onnx (optimum graph)"] = lambda: edgekit_run(fallback_engine, prompt)
        weights["edgekit onnx (optimum graph)"] = sum(p.stat().st_size
                                                      for p in args.onnx_fallback.glob("model.onnx*"))
    if args.optimum and args.optimum.is_dir():
        from optimum.onnxruntime import ORTModelForCausalLM
        from transformers import AutoTokenizer

        omodel = ORTModelForCausalLM.from_pretrained(args.optimum, use_cache=True,
                                                     provider="CPUExecutionProvider")
        otok = AutoTokenizer.from_pretrained(args.optimum)
        cases["optimum ORTModel"] = lambda: optimum_run(omodel, otok, prompt)
        weights["optimum ORTModel"] = sum(p.stat().st_size for p in args.optimum.glob("model.onnx*"))
    for fn in cases.values():  # warm-up
        fn()
    samples: dict[str, list[tuple[float, float]]] = {k: [] for k in cases}
    order = list(cases)
    for run in range(args.runs):
        # counterbalanced: the order flips every run, so no engine always follows the same neighbour
        # (an engine whose worker threads just woke up runs its first tokens faster)
        for name in order if run % 2 == 0 else order[::-1]:
            time.sleep(0.5)  # let the previous engine's spinning worker threads park first
            samples[name].append(cases[name]())
    bw = bandwidth_gbs()
    rows = {}
    for name, vals in samples.items():
        tok_s = statistics.median(v[0] for v in vals)
        rows[name] = {"decode_tok_s": round(tok_s, 1),
                      "ttft_s": round(statistics.median(v[1] for v in vals), 3),
                      "weight_mb": round(weights[name] / 1e6, 1),
                      "pct_of_bandwidth_limit": round(100 * tok_s * weights[name] / (bw * 1e9), 1)}
    print(f"prompt {len(ids)} tokens, {N_TOKENS} generated, {args.runs} interleaved runs after warm-up, "
          f"copy bandwidth {bw:.1f} GB/s")
    print(f"{'engine':<30}{'decode tok/s':>14}{'TTFT s':>9}{'weights MB':>12}{'% of limit':>12}")
    for name, r in rows.items():
        print(f"{name:<30}{r['decode_tok_s']:>14.1f}{r['ttft_s']:>9.3f}{r['weight_mb']:>12.1f}{r['pct_of_bandwidth_limit']:>12.1f}")
    # Two estimates per pair: the ratio of the medians, and the median of per-run ratios (the two
    # runs of one round are adjacent in time, so the pairing cancels the machine's slow drifts;
    # single runs here vary by +-15%).
    pairs = [("gguf", "edgekit gguf", "llama-cpp-python", "raw"),
             ("onnx", "edgekit onnx", "onnxruntime-genai", "genai"),
             ("onnx", "edgekit onnx", "optimum ORTModel", "optimum")]
    ratios = {}
    for prefix, ours, theirs, short in pairs:
        if ours not in samples or theirs not in samples:
            continue
        for i, metric in ((0, "decode"), (1, "ttft")):
            key = "decode_tok_s" if i == 0 else "ttft_s"
            ratios[f"{prefix}_{metric}_vs_{short}"] = rows[ours][key] / rows[theirs][key]
            ratios[f"{prefix}_{metric}_vs_{short}_paired"] = statistics.median(
                a[i] / b[i] for a, b in zip(samples[ours], samples[theirs], strict=True))
    for k, v in ratios.items():
        print(f"{k}: {v:.2f}x")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "ratios": ratios, "bandwidth_gbs": bw}, indent=2))


if __name__ == "__main__":
    main()
