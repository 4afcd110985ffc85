"""One profiled variant: an artifact loaded once on a device, in a process of its own.

Run as `python -m edgekit.quality.profiler_child ARTIFACT DEVICE THREADS` by profiling.py (through
edgekit.children), so that its memory is its own and the caller's script is never imported again (as
multiprocessing would). One JSON line out when loaded, then one JSON line in and out per command:
["run", n_prompt, n_gen, shift], ["rss"], ["stop"].
"""

from __future__ import annotations

import sys
import time

from edgekit import children
from edgekit.children import send


def _serve(path: str, device: str, threads: int | None) -> None:
    children.guard()
    try:
        from edgekit.engine import load
        from edgekit.quality.eval_text import TEXT
        from edgekit.runtimes.base import GenerationOptions

        start = time.perf_counter()
        engine = load(path, device=device, threads=threads)
        load_s = time.perf_counter() - start
        backend = engine.backend
        natural = backend.tokenize(TEXT * 64, True)  # long enough for any prompt and shift
        send({"ok": True, "load_s": load_s, "device": engine.device, "backend": backend.name,
              "context": backend.context_length})
    except Exception as exc:  # everything the parent must hear about, as one line
        send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        return
    for command in children.commands():
        if command[0] == "stop":
            engine.close()
            send({"ok": True})
            return
        if command[0] == "rss":
            send({"ok": True, "peak_rss_mb": _peak_rss_mb()})
            continue
        _, n_prompt, n_gen, shift = command
        try:
            # each run its own prompt (the same length, shifted through the text): llama.cpp would
            # otherwise reuse the cache of an identical prompt and skip most of the prefill
            ids = natural[:1] + natural[1 + shift : n_prompt + shift]
            options = GenerationOptions(max_tokens=n_gen, temperature=0.0, ignore_eos=True)
            begin = time.perf_counter()
            times = [time.perf_counter() for _ in backend.generate(ids, options)]
            end = time.perf_counter()
            send({"ok": True, "start": begin, "times": times, "end": end, "n_prompt": len(ids)})
        except Exception as exc:
            send({"ok": False, "error": f"{type(exc).__name__}: {exc}"})


def _peak_rss_mb() -> float:
    from edgekit.metrics import peak_rss_mb

    return peak_rss_mb() or 0.0


if __name__ == "__main__":
    _serve(sys.argv[1], sys.argv[2], int(sys.argv[3]) or None)
