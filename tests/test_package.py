"""Package-level contracts: a light import and one-to-one CLI/API."""

from __future__ import annotations

import subprocess
import sys


def test_import_edgekit_stays_light():
    code = (
        "import sys, edgekit; heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'llama_cpp', "
        "'optimum', 'gguf', 'numpy') if m in sys.modules]; print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_api_exports():
    import edgekit

    missing = [name for name in edgekit.__all__ if not hasattr(edgekit, name)]
    assert missing == []
    assert issubclass(edgekit.UnsupportedArchitectureError, edgekit.SourceError)
    assert issubclass(edgekit.OutputExistsError, edgekit.EdgekitError)
    assert issubclass(edgekit.ChatTemplateError, edgekit.EdgekitError)
    # Ctrl-C stays a KeyboardInterrupt: `except EdgekitError` in user code must never swallow it
    assert (issubclass(edgekit.Interrupted, KeyboardInterrupt)
            and not issubclass(edgekit.Interrupted, Exception))
