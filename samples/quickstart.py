"""Convert the bundled SmolLM2-135M-Instruct in one call (verified against the source before it is
kept), then ask it something. ONNX int4 by default: on a CPU it is edgekit's fastest and most
faithful path, and needs neither a compiler nor torch.

    python samples/quickstart.py ["your question"]
    python samples/quickstart.py --gguf ["your question"]    llama.cpp's int4 GGUF instead
"""

from __future__ import annotations

import sys
from pathlib import Path

import edgekit


class Progress:
    """One line that follows the conversion's stages (calibrate, quantize, write, verify ...)."""

    def __init__(self) -> None:
        self.width = 0

    def __call__(self, stage: str, done: int, total: int) -> None:
        line = f"  {stage} {done}/{total}" if total else f"  {stage}"
        print("\r" + line.ljust(self.width), end="", flush=True)
        self.width = len(line)

    def end(self) -> None:
        print("\r" + " " * self.width + "\r", end="", flush=True)


def main(argv: list[str]) -> int:
    fmt = "gguf" if argv[:1] == ["--gguf"] else "onnx"
    question = " ".join(argv[1:] if fmt == "gguf" else argv) or "Name three colors."
    out = Path(f"out/smollm2-{fmt}-int4")
    try:
        if (out / "edgekit.json").is_file():
            print(f"using the artifact already at {out}")
        else:
            print(f"converting the bundled SmolLM2-135M-Instruct to {fmt} int4 ...", flush=True)
            # reference_kind="edgekit": graded against edgekit's own fp32 build, so no torch is needed
            progress = Progress()
            try:
                result = edgekit.convert("bundled:smollm2-135m-instruct", to=fmt, quant="int4", output=out,
                                         reference_kind="edgekit", progress=progress)
            finally:
                progress.end()
            print(f"converted in {result.seconds:.1f} s -> {result.path} "
                  f"({result.label}: {result.size_bytes / 1e6:.0f} MB, "
                  f"{result.bits_per_weight:.2f} bits/weight)")
            print(result.fidelity.summary())  # checked against the source before it was kept
        with edgekit.load(out, device="auto") as engine:
            print(f"> {question}")
            reply = engine.chat([{"role": "user", "content": question}], max_tokens=64, temperature=0)
            print(reply.text)
            print(f"[{engine.backend.name} on {engine.device}: TTFT {reply.ttft_s * 1000:.0f} ms, "
                  f"{reply.decode_tok_s:.0f} tok/s decode]")
    except edgekit.EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if fmt == "onnx":
        print("The same through llama.cpp (GGUF int4; compiles llama.cpp once): bash scripts/demo.sh --gguf")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
