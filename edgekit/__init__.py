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
    FidelityWarning,
    Interrupted,
    InvalidOptionError,
    LatencyBudgetExceeded,
    ManifestMismatch,
    MissingDependencyError,
    NoVariantFits,
    OutputExistsError,
    RemoteCodeRefused,
    SourceError,
    SourceNotFoundError,
    SummarizationError,
    TokenizerError,
    UnsafePathError,
    UnsupportedArchitectureError,
)

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .cluster import RayExecutor
    from .conversion import ConversionResult, convert
    from .fidelity import FidelityGateFailed, FidelityReport, VerificationError, verify
    from .profiling import profile
    from .server import ServerConfig, serve
    from .summarizer import Summary, SummaryRun, summarize, summarize_many

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
    "convert": ("conversion", "convert"),
    "ConversionResult": ("conversion", "ConversionResult"),
    "load": ("engine", "load"),
    "LatencyBudget": ("metrics", "LatencyBudget"),
    "devices": ("hardware", "devices"),
    "verify": ("fidelity", "verify"),
    "profile": ("profiling", "profile"),
    "serve": ("server", "serve"),
    "RayExecutor": ("cluster", "RayExecutor"),
    "ServerConfig": ("server", "ServerConfig"),
    "summarize": ("summarizer", "summarize"),
    "summarize_many": ("summarizer", "summarize_many"),
    "Summary": ("summarizer", "Summary"),
    "SummaryRun": ("summarizer", "SummaryRun"),
    "FidelityReport": ("fidelity", "FidelityReport"),
    "FidelityGateFailed": ("fidelity", "FidelityGateFailed"),
    "VerificationError": ("fidelity", "VerificationError"),
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
