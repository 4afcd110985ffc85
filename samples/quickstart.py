"""Convert the bundled SmolLM2-135M-Instruct to an int4 GGUF in one call (verified against the
source before it is kept), then ask it something.

    python samples/quickstart.py ["your question"]
"""

from __future__ import annotations

import sys
from pathlib import Path

import edgekit


def main() -> int:
    question = " ".join(sys.argv[1:]) or "Name three colors."
    out = Path("out/smollm2-q4")
    try:
        if (out / "edgekit.json").is_file():
            print(f"using the artifact already at {out}")
        else:
            result = edgekit.convert("bundled:smollm2-135m-instruct", to="gguf", quant="int4", output=out)
            print(f"converted in {result.seconds:.1f} s -> {result.path} "
                  f"({result.quant}, {result.size_bytes / 1e6:.0f} MB, "
                  f"{result.bits_per_weight:.2f} bits/weight)")
            print(result.fidelity.summary())  # checked against the source before it was kept
        with edgekit.load(out, device="auto") as engine:
            print(f"> {question}")
            reply = engine.chat([{"role": "user", "content": question}], max_tokens=64, temperature=0)
            print(reply.text)
            print(f"[{engine.device}: TTFT {reply.ttft_s * 1000:.0f} ms, "
                  f"{reply.decode_tok_s:.0f} tok/s decode]")
    except edgekit.EdgekitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
