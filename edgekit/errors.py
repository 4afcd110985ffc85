"""Every error a user can cause, as one tree. Each message says what is wrong and what to do next.

EdgekitError
├─ MissingDependencyError        an optional extra is not installed; names the pip line
├─ SourceError                   the checkpoint cannot be used as given
│  ├─ SourceNotFoundError        no such directory, or a hub id absent from the cache offline
│  ├─ UnsupportedArchitectureError   lists the architectures we support
│  ├─ RemoteCodeRefused          config asks for auto_map / custom code
│  ├─ CheckpointFormatError      bad config.json, truncated/garbled safetensors, pickle-only weights
│  └─ TokenizerError             missing or unreadable tokenizer
├─ ConversionError               a conversion failed midway (nothing is left behind)
│  └─ OutputExistsError          the output exists and overwrite was not asked for
├─ ArtifactError                 an artifact directory is missing, incomplete or altered
│  ├─ ManifestMismatch           a file's size or sha256 differs from edgekit.json
│  └─ UnsafePathError            a path in an artifact escapes its directory
├─ InvalidOptionError            an option, prompt or text out of range or unusable (a ValueError)
│  └─ SchemaError                a response format, schema, regex or tool list that cannot be enforced
├─ ChatTemplateError             a chat template fails: syntax, sandbox, raise_exception, limits
├─ BackendError                  the runtime could not load or run an artifact
│  ├─ DeviceUnavailableError     asked for a device this machine does not have
│  └─ ContextOverflowError       prompt longer than the context window
├─ LatencyBudgetExceeded         a call missed its LatencyBudget in mode="raise"; carries the numbers
├─ NoVariantFits                 load() of several variants: none meets the budget here
├─ DocumentError                 empty, binary, encrypted, damaged or of an unknown type
└─ SummarizationError            no summary can be made with this model (context too small, an embedder)

Interrupted                      Ctrl-C or SIGTERM stopped a conversion; names the stage and signal.
                                 A KeyboardInterrupt, not an EdgekitError: never swallowed by
                                 `except EdgekitError`.
"""

from __future__ import annotations

from typing import Any


class EdgekitError(Exception):
    """Base of every error edgekit raises for a problem the user can fix."""


class MissingDependencyError(EdgekitError):
    """`install`: the exact command, when it is not `pip install "edgekit[extra]"`."""

    def __init__(self, package: str, extra: str, purpose: str, install: str | None = None) -> None:
        self.package, self.extra = package, extra
        install = install or f'pip install "edgekit[{extra}]"'
        super().__init__(f"{purpose} needs the '{package}' package, which is not installed. "
                         f"Install it with: {install}")


class SourceError(EdgekitError):
    pass


class SourceNotFoundError(SourceError):
    pass


class UnsupportedArchitectureError(SourceError):
    def __init__(self, path: str, architecture: str, supported: list[str], hint: str = "") -> None:
        self.architecture, self.supported = architecture, supported
        super().__init__(
            f"{path}: architecture '{architecture}' is not supported. "
            f"Supported: {', '.join(sorted(supported))}{hint}"
        )


class RemoteCodeRefused(SourceError):
    pass


class CheckpointFormatError(SourceError):
    pass


class TokenizerError(SourceError):
    pass


class ConversionError(EdgekitError):
    pass


class OutputExistsError(ConversionError):
    pass


class ArtifactError(EdgekitError):
    pass


class ManifestMismatch(ArtifactError):
    pass


class UnsafePathError(ArtifactError):
    pass


class InvalidOptionError(EdgekitError, ValueError):
    pass


class SchemaError(InvalidOptionError):
    """A response format, JSON schema, regex or tool list that constrained decoding cannot enforce:
    malformed, or using a keyword it does not implement (named in the message). `field`: the request
    field it came from ("response_format", "tools", "tool_choice" or "parallel_tool_calls")."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ChatTemplateError(EdgekitError):
    pass


class BackendError(EdgekitError):
    pass


class DeviceUnavailableError(BackendError):
    pass


class ContextOverflowError(BackendError):
    def __init__(self, prompt_tokens: int, max_tokens: int, context_length: int,
                 at_least: bool = False) -> None:
        self.prompt_tokens, self.max_tokens, self.context_length = prompt_tokens, max_tokens, context_length
        super().__init__(
            f"prompt is {'at least ' if at_least else ''}{prompt_tokens} tokens and max_tokens is "
            f"{max_tokens}, but the context window is {context_length}; shorten the prompt or lower "
            "max_tokens"
        )


class LatencyBudgetExceeded(EdgekitError):
    """A call missed a LatencyBudget in mode "raise". `result` is the GenerationResult up to the
    moment the miss was certain (its text included; finish_reason "budget" when cut short)."""

    def __init__(self, message: str, budget, metrics, verdict, result=None) -> None:
        self.budget, self.metrics, self.verdict, self.result = budget, metrics, verdict, result
        super().__init__(message)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM during a conversion; everything it had written is removed."""

    def __init__(self, signum: int, stage: str = "", output: str = "") -> None:
        import signal

        self.signum, self.stage, self.output = signum, stage, output
        name = (signal.Signals(signum).name if signum in signal.Signals._value2member_map_
                else f"signal {signum}")
        where = f" while {stage}" if stage else ""
        left = f"; nothing was written to {output}" if output else ""
        super().__init__(f"interrupted by {name}{where}{left}")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as shells report it: 130 for Ctrl-C, 143 for SIGTERM."""
        return 128 + self.signum


def require(module: str, package: str, extra: str, purpose: str):
    """Import an optional heavy module, or raise MissingDependencyError naming the extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(package, extra, purpose) from exc


class FidelityWarning(UserWarning):
    """load() of an artifact kept after failing its fidelity gate (convert --keep-failed)."""


class NoVariantFits(EdgekitError):
    """load() was given several artifacts and a budget, and none meets it here."""


class DocumentError(EdgekitError):
    """A document edgekit cannot read: empty, binary, encrypted, damaged, or of an unknown type."""

    def __init__(self, path, why: str) -> None:
        self.path, self.why = str(path), why
        super().__init__(f"{path}: {why}")


class SummarizationError(EdgekitError):
    """A summary that cannot be made: the model's context window is too small for any chunk, or the
    model is not a text generator."""


class VerificationError(EdgekitError):
    """The reference cannot be found or is not the model the artifact was converted from."""


class FidelityGateFailed(EdgekitError):
    """A conversion lost more than its gate allows; `report` says what was measured."""

    def __init__(self, message: str, report: Any) -> None:  # a FidelityReport
        self.report = report
        super().__init__(message)


class RenderCancelled(ChatTemplateError):
    """ChatTemplate.render() was stopped by cancel() (or close()) from another thread."""


class LatencyBudgetWarning(UserWarning):
    """Issued in mode="warn" when a call misses its latency budget."""
