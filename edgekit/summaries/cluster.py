"""Summaries past one machine: edgekit.RayExecutor runs summarize_many's files on Ray actors.

Each worker is an actor that opens the engine once, from the artifact's path (engines are never
pickled), with as many threads as Ray gave it CPUs. The driver schedules: one file in flight per
actor, largest first, so one huge document never holds the small ones back. Workers return summaries;
only the driver writes them (atomically, then a line in the run's index), so a worker that dies
loses nothing. A Python error in a file is retried up to max_attempts; a worker that dies (a crash, an
out-of-memory kill) is replaced and its file resubmitted, and a file that kills its worker twice is
failed so the run always ends; a file over its time limit has its worker stopped and counts as a
failed attempt. Ray is imported only here, and only when a RayExecutor runs.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError, InvalidOptionError, MissingDependencyError
from edgekit.progress import Progress

RAY_RANGE = ">=2.49,<2.61"  # the APIs used here, as tested; Ray moves them between releases
DEATHS_ALLOWED = 1  # a file whose worker dies a second time is failed


def _size(value: int | str | None) -> int | None:
    if value is None or isinstance(value, int):
        return value
    from edgekit.metrics import LatencyBudget

    try:  # the same units as the budget's rss line: 2GB, 1500MB, 2GiB
        return int(LatencyBudget.parse(f"rss={value}").rss_mb * 1e6)
    except EdgekitError:
        raise InvalidOptionError(f"memory per worker must look like 2GB or 1500MB, not {value!r}") from None


@dataclass
class RayExecutor:
    """Run edgekit.summarize_many on Ray.

    address: None starts a local Ray runtime on this machine (no dashboard, usage statistics off);
    "auto" or "HOST:PORT" joins a running cluster. workers: how many actors (default: as many as the
    cluster's CPUs allow at cpus_per_worker each). memory_per_worker: reserved per actor ("2GB").
    time_limit: seconds one file may take (None: no limit). The artifact must be readable at the same
    path on every node; each worker checks before the run starts.
    """

    address: str | None = None
    workers: int | None = None
    cpus_per_worker: int = 1
    memory_per_worker: int | str | None = None
    max_attempts: int = 3
    time_limit: float | None = None
    runtime_env: dict[str, Any] | None = None  # passed to ray.init (env_vars, working_dir ...)
    on_event: Callable[[str, str, dict[str, Any]], None] | None = None  # ("start", name, {"pid": ..}) ...

    def __post_init__(self) -> None:
        for name in ("cpus_per_worker", "max_attempts"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise InvalidOptionError(f"{name} must be a whole number >= 1, not {value!r}")
        if self.workers is not None and (type(self.workers) is not int or self.workers < 1):
            raise InvalidOptionError(f"workers must be a whole number >= 1, not {self.workers!r}")
        self.memory_bytes = _size(self.memory_per_worker)

    # ---- Ray ------------------------------------------------------------------------------------
    def _ray(self):
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # offline: nothing is reported
        try:
            import ray
        except ImportError as exc:
            raise MissingDependencyError("ray", "ray", "Summarizing on Ray") from exc
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {
                "include_dashboard": False,
                "log_to_driver": False,
                "logging_level": "ERROR",
            }
            if self.runtime_env:
                kwargs["runtime_env"] = self.runtime_env
            try:
                ray.init(address=self.address, **kwargs)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.address or "a local runtime"
                raise EdgekitError(f"Ray could not start or join {where}: {exc}") from None
        return ray

    def _actor_class(self, ray):
        options: dict[str, Any] = {"num_cpus": self.cpus_per_worker, "max_restarts": 0}
        if self.memory_bytes:
            options["memory"] = self.memory_bytes
        return ray.remote(**options)(SummaryWorker)

    # ---- the run --------------------------------------------------------------------------------
    def run(
        self,
        model: Path,
        jobs: list[dict[str, Any]],
        settings: dict[str, Any],
        finished: Callable[..., None],
        progress: Progress | None = None,
    ) -> None:
        """Summarize jobs ({"path", "name", "size", ...}) and call finished(job, summary, error, attempts,
        seconds) for each, in the driver."""
        if not jobs:
            return
        ray = self._ray()
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        cpus = int(ray.cluster_resources().get("CPU", 1))
        count = min(len(jobs), self.workers or max(1, cpus // self.cpus_per_worker))
        actor_class = self._actor_class(ray)
        config = {**settings, "threads": self.cpus_per_worker}

        def start_actor():
            return actor_class.remote(str(model), config)

        actors: list = []
        try:  # whatever ends the run (an error, Ctrl-C), its actors give back their CPUs and memory
            actors.extend(start_actor() for _ in range(count))
            pids = self._check(ray, actors, model, RayActorError, RayTaskError, GetTimeoutError)
            self._schedule(ray, actors, pids, start_actor, model, jobs, finished, progress)
        finally:
            self._kill(ray, actors)

    def _schedule(
        self,
        ray,
        actors: list,
        pids: list[int],
        start_actor,
        model: Path,
        jobs: list[dict[str, Any]],
        finished: Callable[..., None],
        progress: Progress | None,
    ) -> None:
        """One file in flight per actor, largest first, until every file is done or failed."""
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        count = len(actors)
        pending = deque(sorted(jobs, key=lambda j: -j["size"]))  # largest first
        state = {j["name"]: {"attempts": 0, "deaths": 0, "start": 0.0, "seconds": 0.0} for j in jobs}
        inflight: dict[Any, tuple[int, dict[str, Any]]] = {}
        done = failed = 0

        def tick(what: str) -> None:
            if progress is not None:
                running = len(inflight)
                progress(f"{done} done, {failed} failed, {running} running: {what}", done + failed, len(jobs))

        def submit(i: int) -> None:
            if not pending:
                return
            job = pending.popleft()
            s = state[job["name"]]
            s["start"] = time.monotonic()
            inflight[actors[i].summarize.remote(job["path"])] = (i, job)
            self._event("start", job["name"], {"pid": pids[i], "worker": i})

        def end(job, summary, error) -> None:
            nonlocal done, failed
            s = state[job["name"]]
            finished(job, summary, error, max(1, s["attempts"]), s["seconds"])
            if summary is not None:
                done += 1
            else:
                failed += 1
            self._event("done" if summary is not None else "failed", job["name"], {"error": error})
            tick(job["name"])

        def replace(i: int) -> None:
            try:
                ray.kill(actors[i], no_restart=True)
            except Exception:  # noqa: BLE001 (already dead)
                pass
            actors[i] = start_actor()
            pids[i] = self._check(ray, [actors[i]], model, RayActorError, RayTaskError, GetTimeoutError)[0]

        for i in range(count):
            submit(i)
        tick("started")
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            for ref in ready:
                i, job = inflight.pop(ref)
                s = state[job["name"]]
                s["seconds"] += time.monotonic() - s["start"]
                try:
                    summary = ray.get(ref)
                except RayActorError:  # the worker died (killed, out of memory, a native crash)
                    s["deaths"] += 1
                    self._event("worker-died", job["name"], {"pid": pids[i]})
                    replace(i)
                    if s["deaths"] > DEATHS_ALLOWED:
                        s["attempts"] += 1
                        end(
                            job,
                            None,
                            f"{job['path']}: its worker died {s['deaths']} times while "
                            "summarizing it (out of memory? a crash in the runtime?)",
                        )
                    else:
                        pending.appendleft(job)
                except RayTaskError as exc:  # a Python error in the worker
                    s["attempts"] += 1
                    cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                    if s["attempts"] >= self.max_attempts:
                        message = (
                            str(cause)
                            if isinstance(cause, EdgekitError)
                            else (f"{job['path']}: {type(cause).__name__}: {cause}")
                        )
                        end(job, None, message)
                    else:
                        self._event("retry", job["name"], {"error": str(cause)})
                        pending.appendleft(job)
                else:
                    s["attempts"] += 1
                    end(job, summary, None)
                submit(i)
            if self.time_limit is not None:  # a file past its limit: its worker is stopped
                now = time.monotonic()
                for ref, (i, job) in list(inflight.items()):
                    s = state[job["name"]]
                    if now - s["start"] <= self.time_limit:
                        continue
                    del inflight[ref]
                    s["attempts"] += 1
                    s["seconds"] += now - s["start"]
                    self._event("timeout", job["name"], {"pid": pids[i]})
                    replace(i)
                    if s["attempts"] >= self.max_attempts:
                        end(
                            job,
                            None,
                            f"{job['path']}: took more than {self.time_limit:g} s, {s['attempts']} times",
                        )
                    else:
                        pending.appendleft(job)
                    submit(i)

    def _kill(self, ray, actors: list) -> None:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # noqa: BLE001 (already gone)
                pass

    def _check(self, ray, actors, model: Path, RayActorError, RayTaskError, GetTimeoutError) -> list[int]:
        """Each new worker has opened the artifact; its process id."""
        try:
            return ray.get([a.pid.remote() for a in actors], timeout=300)
        except (RayActorError, RayTaskError) as exc:
            cause = getattr(exc, "cause", None) or exc
            raise EdgekitError(
                f"a Ray worker could not open the model at {model}: {cause}. The artifact must be "
                "readable at the same path on every node (a shared folder, or a copy at that "
                "path on each)"
            ) from None
        except GetTimeoutError:
            raise EdgekitError(
                "no Ray worker started within 300 s: the cluster has too few free CPUs or too "
                "little memory for the workers asked for"
            ) from None

    def _event(self, kind: str, name: str, info: dict[str, Any]) -> None:
        if self.on_event is not None:
            self.on_event(kind, name, info)


class SummaryWorker:
    """What runs inside one Ray actor: the engine, opened once, and summarize() per file."""

    def __init__(self, model: str, config: dict[str, Any]) -> None:
        from edgekit.engine import load
        from edgekit.errors import ArtifactError

        path = Path(model)
        if not (path / "edgekit.json").is_file():
            raise ArtifactError(f"{path} is not readable on {os.uname().nodename}: no edgekit.json there")
        self.config = config
        self.engine = load(
            path, device=config.get("device", "auto"), n_ctx=config.get("n_ctx"), threads=config["threads"]
        )

    def pid(self) -> int:
        return os.getpid()

    def threads(self) -> dict[str, int]:
        """The engine's CPU threads, as its runtime reports them."""
        backend = self.engine.backend
        llm = getattr(backend, "_llm", None)
        if llm is not None:
            return {"n_threads": int(llm.n_threads), "n_threads_batch": int(llm.n_threads_batch)}
        options = backend._sess.get_session_options()
        return {"intra_op_num_threads": int(options.intra_op_num_threads)}

    def summarize(self, path: str):
        from edgekit.summaries.summarizer import summarize

        c = self.config
        return summarize(
            path,
            self.engine,
            c["words"],
            strategy=c["strategy"],
            chunk_tokens=c["chunk_tokens"],
            overlap=c["overlap"],
        )
