"""Which of several variants load() opens: the most faithful that meets the budget on this machine."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.metrics import LatencyBudget
from edgekit.quality.profiling import cpu_model, profile
from edgekit.quality.ranking import faithfulness

# the brief measurement load() makes of each candidate
CHOICE_SETTINGS = {"prompt_tokens": 128, "gen_tokens": 32, "runs": 2}


@dataclass
class Choice:
    """What load() measured of each candidate and why it kept the one it did."""

    picked: str
    reason: str
    candidates: list[dict[str, Any]]  # artifact, fidelity, measured (None: not needed), passed, cached, why

    def __str__(self) -> str:
        lines = [f"picked {self.picked}: {self.reason}"]
        lines += [f"  {c['artifact']}: {c['why']}" for c in self.candidates if c["artifact"] != self.picked]
        return "\n".join(lines)


def _profile_cache() -> Path:
    from edgekit.cache import cache_root

    return cache_root() / "profiles.json"


def _cache_key(manifest: dict[str, Any], device: str, threads: int | None, machine: str) -> str:
    model = next((f.get("sha256") for f in manifest["files"] if f["name"] == manifest["model_file"]), "")
    settings = ",".join(f"{k}={v}" for k, v in CHOICE_SETTINGS.items())
    return f"{machine}|{model}|{device}|{threads}|{settings}"


def choose(paths: Sequence[str | os.PathLike[str]], budget: LatencyBudget | None, device: str = "auto",
           threads: int | None = None) -> tuple[Path, Choice]:
    """The most faithful artifact that meets the budget on this machine, measured briefly in child
    processes (or from the profile cached for this machine and these artifact hashes), most faithful
    first and only until one meets the budget."""
    from edgekit.artifact import read_manifest
    from edgekit.errors import NoVariantFits

    manifests = {str(p): read_manifest(p) for p in paths}
    ranked = sorted(manifests, key=lambda p: faithfulness(manifests[p])[:2])
    if budget is None:  # nothing to measure against: the most faithful
        best = ranked[0]
        return Path(best), Choice(best, faithfulness(manifests[best])[2] + "; no budget given, so nothing "
                                  "was measured", [{"artifact": p, "fidelity": faithfulness(manifests[p])[2],
                                                    "why": "less faithful"} for p in ranked])
    machine = f"{platform.node()}|{cpu_model()}|{os.cpu_count()}"
    cache_path = _profile_cache()
    try:
        cache = json.loads(cache_path.read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError):
        cache = {}
    # In faithfulness order, measuring only until one meets the budget: the less faithful ones after
    # it could not be picked, so they cost nothing (a cached profile is still shown).
    candidates, picked, measured_any = [], None, False
    for p in ranked:
        key = _cache_key(manifests[p], device, threads, machine)
        failed_gate, _, fidelity = faithfulness(manifests[p])
        figures = cache.get(key) if isinstance(cache.get(key), dict) else None
        cached = figures is not None
        if figures is None and picked is None and not failed_gate:
            result = profile([p], None, devices=[device], threads=threads, **CHOICE_SETTINGS).variants[0]
            figures = {"error": result.error, "ttft": result.ttft_ms.get("p50"),
                       "tpot": result.tpot_ms.get("p50"), "itl_p99": result.itl_ms.get("p99"),
                       "total": result.total_ms.get("p50"), "rss": result.peak_rss_mb,
                       "decode_tok_s": result.decode.get("avg_ts")}
            if result.error is None:
                cache[key], measured_any = figures, True
        if figures is None:
            verdict, why = None, ("not measured: " + ("it failed its verify gate" if failed_gate
                                                      else "a more faithful variant meets the budget"))
        elif figures.get("error"):
            verdict, why = None, f"could not run: {figures['error']}"
        else:
            verdict = budget.judge_values(figures)
            why = ("meets the budget but a more faithful one does too" if verdict.met
                   else f"misses {', '.join(verdict.missed)}")
        candidates.append({"artifact": p, "fidelity": fidelity, "measured": figures, "cached": cached,
                           "passed": bool(verdict and verdict.met), "why": why})
        if picked is None and verdict is not None and verdict.met and not failed_gate:
            picked, picked_cached = p, cached
    if measured_any:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            cache_path.write_text(json.dumps(cache))
        except OSError:
            pass  # a read-only home: measured again next time
    if picked is None:
        raise NoVariantFits("no variant meets the budget " + str(budget) + ": "
                            + "; ".join(f"{c['artifact']} {c['why']}" for c in candidates))
    reason = (f"the most faithful variant that meets {budget} ({faithfulness(manifests[picked])[2]}"
              + (", from the cached profile" if picked_cached else "") + ")")
    return Path(picked), Choice(picked, reason, candidates)
