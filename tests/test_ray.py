"""summarize_many on a local Ray runtime (one for the whole module) with the tiny model: every
file written and recorded once, a file that always fails reported after its attempts, a worker killed
mid-file replaced and the file done once, a killed driver (the CLI joining the runtime by address)
resumed without duplicates, and each worker's engine on as many threads as it has CPUs.

Workers load a sitecustomize of known faults: a file named poison* raises, slow.txt takes 4 s more
and slowNs-*.txt N s more."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import corpus
import pytest

import edgekit
from edgekit.summaries.summarizer import INDEX_NAME, read_index

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.system  # a local Ray runtime and a driver killed for real

FAULTS = """
import os, time
try:
    from edgekit.summaries import cluster
except Exception:  # Ray's own helper processes
    cluster = None
if cluster is not None:
    _real = cluster.SummaryWorker.summarize
    def _faulty(self, path):
        name = os.path.basename(path)
        if name.startswith("poison"):
            raise RuntimeError("poisoned on purpose")
        if name.startswith("slow"):  # slow.txt: 4 s more; slow1s-0.txt: 1 s more
            seconds = name[4:].split("s-")[0] if "s-" in name else "4"
            time.sleep(float(seconds))
        return _real(self, path)
    cluster.SummaryWorker.summarize = _faulty
"""


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> dict[str, str]:
    site = tmp_path_factory.mktemp("ray-site")
    (site / "sitecustomize.py").write_text(FAULTS, encoding="utf-8")
    return {
        "PYTHONPATH": os.pathsep.join(
            [str(site), str(Path(edgekit.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
        ),
        "RAY_USAGE_STATS_ENABLED": "0",
    }


@pytest.fixture(scope="module")
def local_ray(faults):
    """A local Ray runtime for the module, started as `edgekit summarize --ray` starts one (RayExecutor
    with no address), on this machine's CPUs. Its processes start with the faults in their environment, so the
    workers of a driver that joins it later (the CLI with --ray-address) load them too."""
    saved = dict(os.environ)
    os.environ.update(faults)
    try:
        edgekit.RayExecutor(runtime_env={"env_vars": faults})._ray()
        assert ray.is_initialized() and ray.cluster_resources()["CPU"] >= 2  # two workers at once
    finally:
        os.environ.clear()
        os.environ.update(saved)
    yield ray
    ray.shutdown()


def _docs(root: Path, names: list[str]) -> Path:
    topics = list(corpus.TOPICS)
    for i, name in enumerate(names):
        corpus.write(root / name, corpus.sections(topics[i % len(topics)]))
    return root


SETTINGS = {"words": 12, "chunk_tokens": 200, "n_ctx": 512}


def test_every_file_once_and_the_same_summaries_as_one_process(local_ray, tiny_model, tmp_path):
    docs = _docs(tmp_path / "docs", ["a.txt", "b.md", "c.html", "d.pdf", "e.docx", "sub/f.txt"])
    events = []
    executor = edgekit.RayExecutor(workers=2, on_event=lambda k, n, i: events.append((k, n)))
    run = edgekit.summarize_many(
        [docs], tiny_model, tmp_path / "ray", recursive=True, executor=executor, **SETTINGS
    )
    assert run.ok and len(run.files) == 6 and all(f.status == "ok" for f in run.files)
    index = [json.loads(line) for line in (tmp_path / "ray" / INDEX_NAME).read_text().splitlines()]
    assert sorted(r["name"] for r in index) == ["a.txt", "b.md", "c.html", "d.pdf", "e.docx", "sub/f.txt"]
    starts = [n for k, n in events if k == "start"]
    sizes = {n: (docs / n).stat().st_size for n in starts}
    assert starts[:2] == sorted(sizes, key=sizes.get, reverse=True)[:2]  # the largest go first
    local = edgekit.summarize_many([docs], tiny_model, tmp_path / "local", recursive=True, **SETTINGS)
    for f in run.files:
        assert (tmp_path / "ray" / f"{f.name}.md").read_text().split("\n\n")[1] == (
            tmp_path / "local" / f"{f.name}.md"
        ).read_text().split("\n\n")[1]  # greedy: identical text
    assert {f.fingerprint for f in run.files} == {f.fingerprint for f in local.files}
    again = edgekit.summarize_many(
        [docs], tiny_model, tmp_path / "ray", recursive=True, executor=executor, **SETTINGS
    )
    assert all(f.status == "skipped" for f in again.files)  # resume: the same fingerprint either way


def test_a_file_that_always_fails_is_reported_after_its_attempts(local_ray, tiny_model, tmp_path):
    docs = _docs(tmp_path / "docs", ["one.txt", "poison.txt", "two.md"])
    events = []
    executor = edgekit.RayExecutor(workers=2, max_attempts=2, on_event=lambda k, n, i: events.append((k, n)))
    run = edgekit.summarize_many([docs], tiny_model, tmp_path / "out", executor=executor, **SETTINGS)
    by_name = {f.name: f for f in run.files}
    assert by_name["poison.txt"].status == "failed" and by_name["poison.txt"].attempts == 2
    assert "RuntimeError: poisoned on purpose" in by_name["poison.txt"].error
    assert by_name["one.txt"].status == by_name["two.md"].status == "ok"
    assert events.count(("retry", "poison.txt")) == 1


def test_a_worker_killed_mid_file_is_replaced_and_the_file_done_once(local_ray, tiny_model, tmp_path):
    docs = _docs(tmp_path / "docs", ["slow2s-a.txt", "b.txt", "c.txt"])
    events = []
    killed = []

    def on_event(kind, name, info):
        events.append((kind, name))
        if kind == "start" and name == "slow2s-a.txt" and not killed:  # SIGKILL its worker a second in
            killed.append(info["pid"])
            threading.Timer(1.0, os.kill, (info["pid"], signal.SIGKILL)).start()

    executor = edgekit.RayExecutor(workers=2, on_event=on_event)
    run = edgekit.summarize_many([docs], tiny_model, tmp_path / "out", executor=executor, **SETTINGS)
    assert run.ok and killed
    assert ("worker-died", "slow2s-a.txt") in events and events.count(("done", "slow2s-a.txt")) == 1
    index = [json.loads(line) for line in (tmp_path / "out" / INDEX_NAME).read_text().splitlines()]
    assert [r["name"] for r in index].count("slow2s-a.txt") == 1


def test_a_file_over_its_time_limit_is_stopped_and_reported(local_ray, tiny_model, tmp_path):
    docs = _docs(tmp_path / "docs", ["slow.txt", "quick.txt"])
    executor = edgekit.RayExecutor(workers=2, max_attempts=1, time_limit=1.5)
    run = edgekit.summarize_many([docs], tiny_model, tmp_path / "out", executor=executor, **SETTINGS)
    by_name = {f.name: f for f in run.files}
    assert by_name["quick.txt"].status == "ok" and by_name["slow.txt"].status == "failed"
    assert "took more than 1.5 s" in by_name["slow.txt"].error


def test_each_worker_runs_its_engine_on_its_cpus(local_ray, tiny_model):
    from edgekit.summaries.cluster import SummaryWorker

    for cpus in (1, 2):
        actor = ray.remote(num_cpus=cpus)(SummaryWorker).remote(
            str(tiny_model), {**SETTINGS, "threads": cpus}
        )
        assert ray.get(actor.threads.remote()) == {"intra_op_num_threads": cpus}
        ray.kill(actor)


def test_a_model_no_worker_can_read_is_a_clear_error(local_ray, tmp_path, tiny_model):
    from edgekit.summaries.cluster import RayExecutor

    docs = _docs(tmp_path / "docs", ["a.txt"])
    jobs = [{"path": str(docs / "a.txt"), "name": "a.txt", "size": 1, "sha256": "x"}]
    with pytest.raises(edgekit.EdgekitError, match="readable at the same path on every node"):
        RayExecutor(workers=1).run(
            tmp_path / "nowhere",
            jobs,
            {**SETTINGS, "strategy": "map-reduce", "overlap": 0, "fmt": "md"},
            lambda *a: None,
        )


def test_a_killed_driver_resumes_where_it_stopped(local_ray, tiny_model, tmp_path, faults):
    """The CLI joining the module's Ray runtime (--ray-address auto: the local one, with its token),
    SIGKILLed once some files are recorded, then run again: only the rest are summarized, and no file
    is recorded twice."""
    names = [f"slow1s-{i}.txt" for i in range(4)]
    docs = _docs(tmp_path / "docs", names)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "edgekit.cli", "summarize", str(docs), "-m", str(tiny_model), "-o", str(out),
           "--ray-address", "auto", "--workers", "1", "-w", "12", "--chunk-tokens", "200", "-c", "512",
           "--json"]
    env = {**os.environ, **faults}
    first = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + 240
    while len(read_index(out)) < 2:
        assert first.poll() is None and time.monotonic() < deadline, first.stderr.read().decode()[-2000:]
        time.sleep(0.2)
    os.killpg(first.pid, signal.SIGKILL)  # the driver: the runtime it joined stays up
    first.wait(timeout=30)
    before = read_index(out)
    assert 2 <= len(before) < len(names)
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr[-2000:]
    counts = json.loads(second.stdout)["run"]["counts"]
    assert counts == {"ok": len(names) - len(before), "skipped": len(before), "failed": 0}
    lines = [json.loads(line) for line in (out / INDEX_NAME).read_text().splitlines()]
    assert sorted(r["name"] for r in lines) == sorted(names)  # each recorded once, across both runs
