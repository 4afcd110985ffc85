"""edgekit: convert distilled Hugging Face students to GGUF/ONNX and run them on local devices.

`import edgekit` stays light: heavy libraries (torch, transformers, onnxruntime, llama_cpp) are
imported only inside the functions that need them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .artifact import find_artifacts, read_manifest
from .errors import (
    ArtifactError,
    BackendError,
    ChatTemplateError,
    CheckpointFormatError,
    ContextOverflowError,
    ConversionError,
    DeviceUnavailableError,
    DocumentError,
    EdgekitError,
    FidelityGateFailed,
    FidelityWarning,
    Interrupted,
    InvalidOptionError,
    LatencyBudgetExceeded,
    ManifestMismatch,
    MissingDependencyError,
    NoVariantFits,
    OutputExistsError,
    RemoteCodeRefused,
    SchemaError,
    SourceError,
    SourceNotFoundError,
    SummarizationError,
    TokenizerError,
    UnsafePathError,
    UnsupportedArchitectureError,
    VerificationError,
)
from .version import __version__

if TYPE_CHECKING:
    from .conversion.pipeline import ConversionResult, convert
    from .engine import load
    from .hardware import devices
    from .metrics import LatencyBudget
    from .quality.fidelity import FidelityReport
    from .quality.profiling import profile
    from .quality.verify import verify
    from .server.app import ServerConfig, serve
    from .summaries.cluster import RayExecutor
    from .summaries.summarizer import Summary, SummaryRun, summarize, summarize_many

__all__ = [
    "ArtifactError",
    "BackendError",
    "ChatTemplateError",
    "CheckpointFormatError",
    "ContextOverflowError",
    "ConversionError",
    "ConversionResult",
    "DeviceUnavailableError",
    "DocumentError",
    "EdgekitError",
    "FidelityGateFailed",
    "FidelityReport",
    "FidelityWarning",
    "Interrupted",
    "InvalidOptionError",
    "LatencyBudget",
    "LatencyBudgetExceeded",
    "ManifestMismatch",
    "MissingDependencyError",
    "NoVariantFits",
    "OutputExistsError",
    "RayExecutor",
    "RemoteCodeRefused",
    "SchemaError",
    "ServerConfig",
    "SourceError",
    "SourceNotFoundError",
    "Summary",
    "SummaryRun",
    "SummarizationError",
    "TokenizerError",
    "UnsafePathError",
    "UnsupportedArchitectureError",
    "VerificationError",
    "__version__",
    "convert",
    "devices",
    "find_artifacts",
    "load",
    "profile",
    "read_manifest",
    "serve",
    "summarize",
    "summarize_many",
    "verify",
]

_LAZY = {
    "convert": ("conversion.pipeline", "convert"),
    "ConversionResult": ("conversion.pipeline", "ConversionResult"),
    "load": ("engine", "load"),
    "LatencyBudget": ("metrics", "LatencyBudget"),
    "devices": ("hardware", "devices"),
    "verify": ("quality.verify", "verify"),
    "profile": ("quality.profiling", "profile"),
    "serve": ("server.app", "serve"),
    "RayExecutor": ("summaries.cluster", "RayExecutor"),
    "ServerConfig": ("server.app", "ServerConfig"),
    "summarize": ("summaries.summarizer", "summarize"),
    "summarize_many": ("summaries.summarizer", "summarize_many"),
    "Summary": ("summaries.summarizer", "Summary"),
    "SummaryRun": ("summaries.summarizer", "SummaryRun"),
    "FidelityReport": ("quality.fidelity", "FidelityReport"),
}


def __getattr__(name: str) -> Any:
    # Submodules pull in numpy/gguf; load them on first use so `import edgekit` stays cheap.
    if name == "bundled":  # edgekit.bundled.path(...) without a separate import
        import importlib

        return importlib.import_module(".bundled", __name__)
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'edgekit' has no attribute {name!r}")
