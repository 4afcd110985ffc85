"""summarize_many on Ray against one process: real SmolLM2-135M-Instruct (ONNX int4) over a folder of
generated documents, 2 local Ray workers of 1 CPU each against the single-process path (one engine on
every core). Same summaries (greedy), and the documents per minute of each.

    .venv/bin/python bench/ray_bench.py [--docs 12] [--words 60]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import corpus  # noqa: E402

import edgekit  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=12)
    ap.add_argument("--words", type=int, default=60)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ray-bench-"))
    smol = edgekit.convert("bundled:smollm2-135m-instruct", to="onnx", quant="int4", output=work / "smol",
                           verify=False).path
    topics = list(corpus.TOPICS)
    kinds = (".txt", ".md", ".html", ".pdf", ".docx")
    for i in range(args.docs):  # one to three topics each, so sizes differ
        parts = [s for t in range(1 + i % 3) for s in corpus.sections(topics[(i + t) % len(topics)])]
        corpus.write(work / "docs" / f"{i:02d}{kinds[i % len(kinds)]}", parts, f"Document {i}")

    timings = {}
    start = time.perf_counter()
    local = edgekit.summarize_many([work / "docs"], smol, work / "local", args.words)
    timings["one process"] = time.perf_counter() - start
    executor = edgekit.RayExecutor(workers=args.workers, cpus_per_worker=1)
    executor._ray()  # start the local runtime outside the timing: a cluster is up before a job
    start = time.perf_counter()
    ray_run = edgekit.summarize_many([work / "docs"], smol, work / "ray", args.words, executor=executor)
    timings[f"Ray, {args.workers} workers"] = time.perf_counter() - start
    assert local.ok and ray_run.ok
    same = all((work / "local" / f"{f.name}.md").read_text().split("\n\n")[1]
               == (work / "ray" / f"{f.name}.md").read_text().split("\n\n")[1] for f in local.files)
    print(f"{args.docs} documents; identical summaries: {same}")
    for name, seconds in timings.items():
        print(f"{name}: {seconds:.1f} s, {60 * args.docs / seconds:.1f} documents per minute")
    return 0


if __name__ == "__main__":
    sys.exit(main())
