"""profile(): on this machine, how fast and how big each variant of a model is, and which meet a budget.

Each variant (an artifact on a device) runs in a child process of its own, so that one variant's
memory never counts against another; the children stay up and are driven round by round, so that
drift on the machine hits every variant alike. Prompts are cut from natural text to an exact token
count with each artifact's own tokenizer, and exactly n_gen tokens are generated (end of text
ignored). Field names follow llama-bench's where they overlap (n_prompt, n_gen, avg_ts, stddev_ts).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgekit.children import Child, ChildExited, ChildTimeout
from edgekit.errors import InvalidOptionError
from edgekit.metrics import LatencyBudget
from edgekit.progress import Progress


class _Variant:
    """One artifact on one device, in its own process (edgekit.quality.profiler_child)."""

    def __init__(self, path: Path, device: str, threads: int | None) -> None:
        self.path, self.device_asked = path, device
        self.child = Child("edgekit.quality.profiler_child", [str(path), device, str(threads or 0)])
        self.info: dict[str, Any] = {}
        self.runs: list[dict[str, Any]] = []
        self.error: str | None = None

    def ready(self, timeout: float = 600) -> None:
        self.info = self._answer(None, timeout)
        if not self.info.get("ok"):
            self.error = self.info.get("error", "the variant did not start")

    def run(self, n_prompt: int, n_gen: int, keep: bool = True) -> None:
        if self.error:
            return
        reply = self._answer(["run", n_prompt, n_gen, 17 * len(self.runs) + (0 if keep else 400)], 600)
        if not reply.get("ok"):
            self.error = reply.get("error")
        elif keep:
            self.runs.append(reply)

    def finish(self) -> float | None:
        """Peak RSS of the child (MB), then stop it."""
        peak = self._answer(["rss"], 60).get("peak_rss_mb") if self.error is None else None
        if self.child.alive():
            self._answer(["stop"], 60)
        self.child.close(grace=10)
        return peak

    def _answer(self, command: list[Any] | None, timeout: float) -> dict[str, Any]:
        """The child's reply to command (None: its first line, once loaded), or {"ok": False, "error"}."""
        try:
            return self.child.receive(timeout) if command is None else self.child.ask(command, timeout)
        except ChildTimeout:
            self.child.kill()
            return {"ok": False, "error": f"no answer within {timeout:.0f} s"}
        except ChildExited as exited:
            return {"ok": False, "error": f"the process died (exit status {exited.code})"}


# ---- the machine -------------------------------------------------------------------------------
def copy_bandwidth_gbs(size_mb: int = 256, repeats: int = 5) -> float:
    """Memory copy rate in GB/s: bytes copied per second (each read once and written once), the
    best of a few copies of a buffer far larger than the caches."""
    import numpy as np

    src = np.ones(size_mb * 1_000_000 // 8)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
    return src.nbytes / best / 1e9


@functools.cache  # a machine's CPU does not change while edgekit runs (on macOS: a sysctl process)
def cpu_model() -> str:
    if sys.platform == "linux":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
    if sys.platform == "darwin":
        import subprocess

        out = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True, text=True)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return platform.processor() or platform.machine()


def hardware(cache: Path | None = None) -> dict[str, Any]:
    """CPU, cores, memory, copy bandwidth (measured once per machine, then read from the cache),
    what each backend can run on, and the backend versions."""
    from importlib.metadata import PackageNotFoundError, version

    from edgekit.hardware import devices

    cpu = cpu_model()
    from edgekit.cache import cache_root

    cache = cache or cache_root() / "hardware.json"
    key = f"copy-v1|{platform.node()}|{cpu}|{os.cpu_count()}"
    known: dict[str, Any] = {}
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        pass
    bandwidth = known.get(key) if isinstance(known, dict) else None
    if not isinstance(bandwidth, int | float):
        bandwidth = round(copy_bandwidth_gbs(), 2)
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            cache.write_text(json.dumps({**(known if isinstance(known, dict) else {}), key: bandwidth}))
        except OSError:
            pass  # a read-only home: measured again next time
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    except (ValueError, OSError, AttributeError):
        memory = None
    versions = {}
    for dist in ("llama-cpp-python", "onnxruntime", "onnxruntime-gpu"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": memory and round(memory, 1),
            "copy_bandwidth_gbs": bandwidth, "devices": devices(), "versions": versions,
            "python": platform.python_version(), "platform": f"{sys.platform}-{platform.machine()}"}


# ---- what was measured here, kept for load()'s choice among variants ----------------------------
def measured_key(manifest: dict[str, Any], device: str, threads: int | None, prompt_tokens: int,
                 gen_tokens: int, runs: int) -> str:
    """This machine, the artifact's model file (by hash), device, threads and the settings measured."""
    model = next((f.get("sha256") for f in manifest["files"] if f["name"] == manifest["model_file"]), "")
    machine = f"{platform.node()}|{cpu_model()}|{os.cpu_count()}"
    return (f"{machine}|{model}|{device}|{threads}|"
            f"prompt_tokens={prompt_tokens},gen_tokens={gen_tokens},runs={runs}")


def read_measured() -> dict[str, Any]:
    """The figures measured on this machine before (cache root's profiles.json), by measured_key."""
    from edgekit.cache import cache_root

    try:
        known = json.loads((cache_root() / "profiles.json").read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def record_measured(entries: dict[str, dict[str, Any]]) -> None:
    """Add figures to profiles.json (a read-only home: they are measured again next time)."""
    from edgekit.cache import cache_root

    if not entries:
        return
    path = cache_root() / "profiles.json"
    known = {**read_measured(), **entries}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".profiles.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(known))
        os.replace(tmp, path)
    except OSError:
        pass


def figures(result: VariantResult) -> dict[str, Any]:
    """The medians a budget is judged on, as load()'s choice keeps them."""
    return {"error": result.error, "ttft": result.ttft_ms.get("p50"), "tpot": result.tpot_ms.get("p50"),
            "itl_p99": result.itl_ms.get("p99"), "total": result.total_ms.get("p50"),
            "rss": result.peak_rss_mb, "decode_tok_s": result.decode.get("avg_ts")}


# ---- the report --------------------------------------------------------------------------------
@dataclass
class VariantResult:
    artifact: str
    device: str
    format: str | None = None
    quant: str | None = None
    backend: str | None = None
    file_size_mb: float | None = None
    load_s: float | None = None
    peak_rss_mb: float | None = None
    n_prompt: int = 0
    n_gen: int = 0
    runs: int = 0
    ttft_ms: dict[str, float] = field(default_factory=dict)  # p50, p90, p99 over runs
    tpot_ms: dict[str, float] = field(default_factory=dict)
    itl_ms: dict[str, float] = field(default_factory=dict)  # over every gap of every run
    itl_samples_ms: list[float] = field(default_factory=list)  # those gaps, for the report's plot
    total_ms: dict[str, float] = field(default_factory=dict)
    prefill: dict[str, float] = field(default_factory=dict)  # avg_ts, stddev_ts (tokens/s)
    decode: dict[str, float] = field(default_factory=dict)
    bandwidth_pct: float | None = None  # decode tok/s x bytes per token / copy bandwidth
    budget: dict[str, Any] | None = None  # per line: measured, limit, pass; and "passed"
    error: str | None = None

    @property
    def passed(self) -> bool:
        return self.error is None and (self.budget is None or bool(self.budget["passed"]))


@dataclass
class ProfileReport:
    hardware: dict[str, Any]
    variants: list[VariantResult]
    budget: str | None
    settings: dict[str, Any]

    @property
    def any_passed(self) -> bool:
        return any(v.passed for v in self.variants)

    def to_dict(self) -> dict[str, Any]:
        return {"hardware": self.hardware, "budget": self.budget, "settings": self.settings,
                "verdict": self.verdict(), "warnings": self.warnings(),
                "variants": [{**asdict(v), "name": n, "passed": v.passed, "fidelity": self.fidelity(v)}
                             for v, n in zip(self.variants, self.names(), strict=True)]}

    def names(self) -> list[str]:
        """Each variant as people call it: its folder's name (its parent's too when that is the same
        for two), with the device when several were profiled."""
        names = [Path(v.artifact).name for v in self.variants]
        if len(set(names)) < len(set(v.artifact for v in self.variants)):
            names = ["/".join(Path(v.artifact).parts[-2:]) for v in self.variants]
        if len({v.device for v in self.variants}) > 1:
            names = [f"{n} on {v.device}" for n, v in zip(names, self.variants, strict=True)]
        return names

    def fidelity(self, v: VariantResult) -> str:
        """What its verify report says it lost (or that it has none)."""
        from edgekit.artifact import read_manifest
        from edgekit.errors import EdgekitError
        from edgekit.quality.ranking import faithfulness

        try:
            return faithfulness(read_manifest(v.artifact, verify=False))[2]
        except EdgekitError:
            return "unknown"

    def verdict(self) -> str:
        """One line first: which variant to ship and why, or that none meets the budget."""
        from edgekit.artifact import read_manifest
        from edgekit.errors import EdgekitError
        from edgekit.quality.ranking import faithfulness

        names = dict(zip(map(id, self.variants), self.names(), strict=True))
        good = [v for v in self.variants if v.error is None]
        if not good:
            return "no variant ran: " + "; ".join(f"{names[id(v)]}: {v.error}" for v in self.variants)
        if self.budget is None:
            fastest = max(good, key=lambda v: v.decode.get("avg_ts") or 0)
            return (f"no budget given; the fastest decode: {names[id(fastest)]} "
                    f"({fastest.decode.get('avg_ts')} tok/s)")
        passing = [v for v in good if v.passed]
        if not passing:
            closest = min(good, key=lambda v: len((v.budget or {}).get("missed", [])))
            return (f"no variant meets {self.budget}; the closest, {names[id(closest)]}, misses "
                    f"{', '.join((closest.budget or {}).get('missed', []))}")

        def rank(v: VariantResult) -> tuple[int, float]:
            try:
                return faithfulness(read_manifest(v.artifact, verify=False))[:2]
            except EdgekitError:
                return (2, float("inf"))

        best = min(passing, key=rank)
        from edgekit.metrics import LatencyBudget

        parsed = LatencyBudget.parse(self.budget)
        named = (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl_p99", "itl_p99_ms"), ("total", "total_ms"),
                 ("rss", "rss_mb"))
        lines = [k for k, attr in named if getattr(parsed, attr) is not None]
        others = len(passing) - 1
        return (f"ship {names[id(best)]}: meets {', '.join(lines) or self.budget}; "
                f"{self.fidelity(best)}" + (f" (the most faithful of {len(passing)} that meet it)"
                                           if others else " (the only one that meets it)"))

    def warnings(self) -> list[str]:
        """Why the figures may not hold: other work on the machine, or runs that disagree."""
        out = []
        load, cores = self.settings.get("load_average_max"), self.hardware.get("cores") or 1
        if load is not None and load > 0.5 * cores + 0.5:
            out.append(f"the machine was busy (load average up to {load} on {cores} cores): other work "
                       "shared the CPU, so these figures are slower and noisier than an idle machine's")
        for v, name in zip(self.variants, self.names(), strict=True):
            avg, sd = v.decode.get("avg_ts"), v.decode.get("stddev_ts")
            if avg and sd is not None and sd > 0.1 * avg:
                out.append(f"{name}: decode speed varied by {100 * sd / avg:.0f}% from run to run; "
                           "run more rounds (-r) on a quieter machine before trusting it")
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One flat row per variant (the table, CSV and Markdown)."""
        out = []
        for v in self.variants:
            row = {"artifact": v.artifact, "device": v.device, "format": v.format, "quant": v.quant,
                   "size_mb": v.file_size_mb, "load_s": _r(v.load_s, 2),
                   "peak_rss_mb": _r(v.peak_rss_mb, 0),
                   "ttft_p50_ms": v.ttft_ms.get("p50"), "ttft_p99_ms": v.ttft_ms.get("p99"),
                   "tpot_p50_ms": v.tpot_ms.get("p50"), "itl_p50_ms": v.itl_ms.get("p50"),
                   "itl_p90_ms": v.itl_ms.get("p90"), "itl_p99_ms": v.itl_ms.get("p99"),
                   "pp_avg_ts": v.prefill.get("avg_ts"), "pp_stddev_ts": v.prefill.get("stddev_ts"),
                   "tg_avg_ts": v.decode.get("avg_ts"), "tg_stddev_ts": v.decode.get("stddev_ts"),
                   "bandwidth_pct": v.bandwidth_pct,
                   "budget": "-" if v.budget is None else ("PASS" if v.budget["passed"] else
                                                           "FAIL " + ",".join(v.budget["missed"])),
                   "error": v.error}
            out.append(row)
        return out

    def csv(self) -> str:
        import csv
        import io

        buffer = io.StringIO()
        rows = self.rows()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["artifact"])
        writer.writeheader()
        writer.writerows(rows)
        return buffer.getvalue()

    def markdown(self) -> str:
        rows = self.rows()
        if not rows:
            return ""
        keys = [k for k in rows[0] if any(r[k] is not None for r in rows)]
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join("" if r[k] is None else str(r[k]) for k in keys) + " |" for r in rows]
        return "\n".join(lines)


def write_report(report: ProfileReport, folder: str | os.PathLike[str]) -> Path:
    """profile.json, profile.png (latency per variant; decode tok/s against the bandwidth limit) and an
    index.html showing both with the table; returns the page. Needs matplotlib (edgekit[report])."""
    import html
    import io

    from edgekit.errors import require

    require("matplotlib", "matplotlib", "report", "Writing the profile report's plot")
    import matplotlib

    matplotlib.use("Agg")  # files only, no screen
    import matplotlib.pyplot as plt

    from edgekit.paths import replace_file, writable_folder

    out = writable_folder(folder, "the report")  # each file renamed into place: no link is followed
    replace_file(out / "profile.json", (json.dumps(report.to_dict(), indent=2) + "\n").encode())
    named = dict(zip(map(id, report.variants), report.names(), strict=True))
    measured = [v for v in report.variants if v.error is None and v.itl_samples_ms]
    names = [named[id(v)] for v in measured]  # every series by the variant's own name
    limits_ms = _budget_ms(report.budget)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    if measured:
        # matplotlib 3.10 names it orientation; vert= is deprecated from there on
        horizontal = ({"orientation": "horizontal"} if matplotlib.__version_info__ >= (3, 10)
                      else {"vert": False})
        left.boxplot([v.itl_samples_ms for v in measured], positions=range(len(measured)), showfliers=True,
                     **horizontal)
        left.set_yticks(range(len(measured)), names)
        speeds = [v.decode["avg_ts"] for v in measured]
        errors = [v.decode["stddev_ts"] for v in measured]
        right.barh(names, speeds, xerr=errors, color="#4c72b0", label="decode tok/s (mean, stddev)")
        rate = report.hardware.get("copy_bandwidth_gbs")
        limits = [rate * 1e9 / (v.file_size_mb * 1e6) if rate and v.file_size_mb else None for v in measured]
        for i, limit in enumerate(limits):
            if limit:
                right.plot([limit, limit], [i - 0.4, i + 0.4], color="#c44e52", linewidth=3,
                           label="memory-bandwidth limit" if i == 0 else None)
        for key, style in (("tpot", "--"), ("itl_p99", ":")):  # the budget, where it says something here
            if key in limits_ms:
                left.axvline(limits_ms[key], color="#dd8452", linestyle=style, linewidth=2,
                             label=f"budget {key} {limits_ms[key]:g} ms")
                if key == "tpot":
                    speed = 1000 / limits_ms[key]
                    right.axvline(speed, color="#dd8452", linestyle=style, linewidth=2,
                                  label=f"budget: tpot {limits_ms[key]:g} ms = {speed:.3g} tok/s")
        if any(k in limits_ms for k in ("tpot", "itl_p99")):
            left.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), frameon=False)
        right.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, frameon=False)
    left.set_xlabel("inter-token latency (ms)")
    left.set_title("Latency per token, every gap of every run")
    right.set_xlabel("tokens per second")
    right.set_title("Decode speed against the memory limit")
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    replace_file(out / "profile.png", png.getvalue())
    rows = report.rows()
    for row, v in zip(rows, report.variants, strict=True):  # the verdict and the fidelity come first
        row.update(variant=named[id(v)], fidelity=report.fidelity(v))
    keys = [k for k in _PAGE_COLUMNS if any(r.get(k) is not None for r in rows)]
    head = "".join(f"<th>{html.escape(_PAGE_COLUMNS[k])}</th>" for k in keys)
    cell = lambda value: f"<td>{html.escape('' if value is None else str(value))}</td>"  # noqa: E731
    body = "".join("<tr>" + "".join(cell(r.get(k)) for k in keys) + "</tr>" for r in rows)
    warnings = "".join(f'<p class="warning">{html.escape(w)}</p>' for w in report.warnings())
    verdict = report.verdict()
    hw = report.hardware
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>edgekit profile</title>
<style>body{{font-family:sans-serif;margin:1.5em;max-width:1240px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;font-size:13px}}img{{max-width:100%}}
#verdict{{font-size:20px;font-weight:bold;color:{"#2a7d2a" if verdict.startswith("ship") else "#b03030"}}}
.warning{{color:#9a6a00}}</style></head>
<body><h1>edgekit profile</h1>
<p id="verdict">{html.escape(verdict)}</p>{warnings}
<table><tr>{head}</tr>{body}</table>
<p>{html.escape(str(hw.get("cpu")))}, {hw.get("cores")} cores, {hw.get("memory_gb")} GB, memory copy
{hw.get("copy_bandwidth_gbs")} GB/s. Budget: {html.escape(report.budget or "none")}.</p>
<img id="plot" src="profile.png" alt="latency and decode speed per variant"
 onload="document.body.dataset.plotWidth = this.naturalWidth">
<p>Raw figures: <a href="profile.json">profile.json</a>.</p></body></html>
"""
    replace_file(out / "index.html", page.encode())
    return out / "index.html"


# the page's table: the verdict and the fidelity first, then the figures, each with its unit
_PAGE_COLUMNS = {
    "variant": "variant", "budget": "budget", "fidelity": "fidelity", "ttft_p50_ms": "TTFT p50 (ms)",
    "tpot_p50_ms": "TPOT p50 (ms)", "itl_p99_ms": "ITL p99 (ms)", "tg_avg_ts": "decode (tok/s)",
    "pp_avg_ts": "prefill (tok/s)", "peak_rss_mb": "peak RSS (MB)", "size_mb": "size (MB)",
    "load_s": "load (s)", "bandwidth_pct": "memory bandwidth used (%)", "device": "device",
    "format": "format", "quant": "quant", "error": "error",
}


def _budget_ms(budget: str | None) -> dict[str, float]:
    """The budget's latency lines in ms ({"tpot": 200.0, ...}), for the plot."""
    if not budget:
        return {}
    from edgekit.metrics import LatencyBudget

    parsed = LatencyBudget.parse(budget)
    lines = {"ttft": parsed.ttft_ms, "tpot": parsed.tpot_ms, "itl_p99": parsed.itl_p99_ms}
    return {k: float(v) for k, v in lines.items() if v is not None}


def _r(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _spread(values: Sequence[float]) -> dict[str, float]:
    return {"avg_ts": round(statistics.fmean(values), 2),
            "stddev_ts": round(statistics.stdev(values), 2) if len(values) > 1 else 0.0}


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 90, 99)}


def _summarize(variant: _Variant, result: VariantResult, n_gen: int, bandwidth: float | None,
               budget: LatencyBudget | None) -> None:
    from edgekit.metrics import DecodeMetrics

    metrics = [DecodeMetrics.from_times(r["start"], r["times"], r["end"], r["n_prompt"])
               for r in variant.runs]
    if not metrics:
        return
    result.runs, result.n_prompt, result.n_gen = len(metrics), metrics[0].tokens_in, n_gen
    result.ttft_ms = _percentiles([1000 * m.ttft_s for m in metrics])
    result.tpot_ms = _percentiles([1000 * m.tpot_s for m in metrics])
    result.total_ms = _percentiles([1000 * m.total_s for m in metrics])
    result.itl_samples_ms = [round(1000 * gap, 3) for m in metrics for gap in m.itl_s]
    result.itl_ms = _percentiles(result.itl_samples_ms)
    result.prefill = _spread([m.prefill_tok_s for m in metrics])
    result.decode = _spread([m.decode_tok_s for m in metrics])
    if bandwidth and result.file_size_mb:
        # every weight is read once per generated token, so the rate memory moves bytes bounds decode
        result.bandwidth_pct = round(100 * result.decode["avg_ts"] * result.file_size_mb * 1e6
                                     / (bandwidth * 1e9), 1)
    if budget is not None:
        measured = {"ttft": result.ttft_ms.get("p50"), "tpot": result.tpot_ms.get("p50"),
                    "itl_p99": result.itl_ms.get("p99"), "total": result.total_ms.get("p50"),
                    "rss": result.peak_rss_mb}
        verdict = budget.judge_values(measured)
        result.budget = {"passed": verdict.met, "missed": verdict.missed,
                         "measured": {k: v for k, v in measured.items() if v is not None}}


def profile(artifacts: Sequence[str | os.PathLike[str]], budget: LatencyBudget | str | None = None, *,
            prompt_tokens: int = 256, gen_tokens: int = 128, runs: int = 5,
            devices: Sequence[str] = ("auto",), threads: int | None = None,
            progress: Progress | None = None) -> ProfileReport:
    """Measure every artifact on every device, interleaved round by round, and judge each against
    the budget ("ttft=300ms,tpot=25ms,rss=1GB" or a LatencyBudget). A warm-up run comes first;
    TTFT/TPOT/total are judged at their median over runs, ITL at p99 over every gap, memory at the
    variant's peak RSS. A variant that cannot load or run is reported with its error.
    progress(stage, done, total) follows the measured runs: stage names the variant about to run
    ("ARTIFACT on DEVICE"), then "done"; done of total runs (variants x runs) are finished."""
    from edgekit.artifact import read_manifest

    if isinstance(budget, str):
        budget = LatencyBudget.parse(budget)
    for name, value, low in (("prompt_tokens", prompt_tokens, 1), ("gen_tokens", gen_tokens, 2),
                             ("runs", runs, 1)):
        if type(value) is not int or value < low:
            raise InvalidOptionError(f"{name} must be a whole number >= {low}, not {value!r}")
    if not artifacts:
        raise InvalidOptionError("profile() needs at least one artifact")
    manifests = {}
    for artifact in artifacts:  # bad paths fail before any process starts
        manifests[str(artifact)] = read_manifest(artifact)
    machine = hardware()
    variants, results, keys = [], [], []
    for artifact in artifacts:
        manifest = manifests[str(artifact)]
        for device in devices:
            keys.append(measured_key(manifest, device, threads, prompt_tokens, gen_tokens, runs))
            quant = manifest.get("quantization") or {}
            size = sum(int(f.get("size", 0)) for f in manifest["files"]
                       if not str(f["name"]).startswith("tokenizer") and str(f["name"]).endswith(
                           (".gguf", ".onnx", ".data", ".onnx_data")))
            results.append(VariantResult(str(artifact), device, manifest.get("format"),
                                         quant.get("label") or quant.get("scheme"),
                                         file_size_mb=round(size / 1e6, 1)))
            variants.append(_Variant(Path(artifact), device, threads))
    total = len(variants) * runs
    done = 0
    load = [_load_average()]
    try:
        for variant, result in zip(variants, results, strict=True):
            variant.ready()
            result.load_s = variant.info.get("load_s")
            result.device = variant.info.get("device", result.device)
            result.backend = variant.info.get("backend")
            if variant.error is None and prompt_tokens + gen_tokens > variant.info["context"]:
                variant.error = (f"{prompt_tokens} prompt + {gen_tokens} generated tokens exceed the context "
                                 f"window of {variant.info['context']}")
            variant.run(prompt_tokens, 4, keep=False)  # warm-up: the prompt's full size, a few tokens
        for _ in range(runs):  # round by round: every variant once per round
            for variant, result in zip(variants, results, strict=True):
                if progress:
                    progress(f"{result.artifact} on {result.device}", done, total)
                variant.run(prompt_tokens, gen_tokens)
                done += 1
            load.append(_load_average())
        if progress:
            progress("done", total, total)
    finally:
        for variant, result in zip(variants, results, strict=True):
            result.peak_rss_mb = variant.finish()
            result.error = variant.error
    for variant, result in zip(variants, results, strict=True):
        _summarize(variant, result, gen_tokens, machine.get("copy_bandwidth_gbs"), budget)
    # kept for load(): a choice among these variants with the same settings measures nothing again
    record_measured({key: figures(result) for key, result in zip(keys, results, strict=True)
                     if result.error is None})
    return ProfileReport(machine, results, None if budget is None else str(budget),
                         {"prompt_tokens": prompt_tokens, "gen_tokens": gen_tokens, "runs": runs,
                          "threads": threads, "devices": list(devices),
                          "load_average_max": max((x for x in load if x is not None), default=None)})


def _load_average() -> float | None:
    """The 1-minute load average (None where the system has none): other work on the machine."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None
