"""The surface a newcomer touches first: names that resolve the way the README uses them."""

from __future__ import annotations

import subprocess
import sys


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_devices_stays_the_function_after_load_imports_everything():
    code = ("import edgekit, edgekit.engine, edgekit.hardware, edgekit.cli\n"
            "print(callable(edgekit.devices), type(edgekit.devices()).__name__)")
    assert _python(code) == "True dict"


def test_no_submodule_shadows_a_public_name():
    """Importing a submodule sets it as an attribute of the package: a module named like a public
    function (edgekit/verify.py next to edgekit.verify()) would replace the function."""
    code = ("import importlib, pkgutil, types, edgekit\n"
            "for m in pkgutil.iter_modules(edgekit.__path__): importlib.import_module('edgekit.' + m.name)\n"
            "print(sorted(n for n in edgekit.__all__ if isinstance(getattr(edgekit, n), types.ModuleType)))")
    assert _python(code) == "[]"


def test_bundled_needs_no_import_of_its_own():
    assert _python("import edgekit; print(callable(edgekit.bundled.path))") == "True"


def test_cli_version_and_short_help():
    from edgekit import __version__

    cli = [sys.executable, "-m", "edgekit.cli"]
    version = subprocess.run([*cli, "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"edgekit {__version__}"
    short = subprocess.run([*cli, "-h"], capture_output=True, text=True)
    assert short.returncode == 0 and "convert" in short.stdout and "Usage" in short.stdout
    sub = subprocess.run([*cli, "run", "-h"], capture_output=True, text=True)
    assert sub.returncode == 0 and "--max-tokens" in sub.stdout
