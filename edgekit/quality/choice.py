"""Which of several variants load() opens: the most faithful that meets the budget on this machine."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.metrics import LatencyBudget
from edgekit.quality.profiling import figures, measured_key, profile, read_measured
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
    cache = read_measured()  # what profile() measured here before, with these settings
    # In faithfulness order, measuring only until one meets the budget: the less faithful ones after
    # it could not be picked, so they cost nothing (a cached profile is still shown).
    candidates, picked, picked_cached = [], None, False
    for p in ranked:
        key = measured_key(manifests[p], device, threads, **CHOICE_SETTINGS)
        failed_gate, _, fidelity = faithfulness(manifests[p])
        known = cache.get(key) if isinstance(cache.get(key), dict) else None
        cached = known is not None
        if known is None and picked is None and not failed_gate:  # profile() records it for next time
            known = figures(profile([p], None, devices=[device], threads=threads,
                                    **CHOICE_SETTINGS).variants[0])
        if known is None:
            verdict, why = None, ("not measured: " + ("it failed its verify gate" if failed_gate
                                                      else "a more faithful variant meets the budget"))
        elif known.get("error"):
            verdict, why = None, f"could not run: {known['error']}"
        else:
            verdict = budget.judge_values(known)
            why = ("meets the budget but a more faithful one does too" if verdict.met
                   else f"misses {', '.join(verdict.missed)}")
        candidates.append({"artifact": p, "fidelity": fidelity, "measured": known, "cached": cached,
                           "passed": bool(verdict and verdict.met), "why": why})
        if picked is None and verdict is not None and verdict.met and not failed_gate:
            picked, picked_cached = p, cached
    if picked is None:
        raise NoVariantFits("no variant meets the budget " + str(budget) + ": "
                            + "; ".join(f"{c['artifact']} {c['why']}" for c in candidates))
    reason = (f"the most faithful variant that meets {budget} ({faithfulness(manifests[picked])[2]}"
              + (", from the cached profile" if picked_cached else "") + ")")
    return Path(picked), Choice(picked, reason, candidates)
