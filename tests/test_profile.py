"""edgekit profile on tiny artifacts: every variant measured in its own process, round by round,
judged against a budget; a variant that cannot run is reported, not fatal."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

import edgekit

from helpers import cli as _cli

pytestmark = pytest.mark.system  # a child process per variant, and the report in a real browser


@pytest.fixture(scope="module")
def variants(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    ckpt = str(tiny_checkpoint("qwen2"))
    return [edgekit.convert(ckpt, to=fmt, quant=q, output=root / f"{fmt}-{q}", verify=False).path
            for fmt, q in (("gguf", "int4"), ("onnx", "int8"))]


def test_profile_measures_each_variant_in_its_own_process(variants):
    seen = []
    report = edgekit.profile(variants, "ttft=60s,tpot=10s,itl_p99=10s,total=60s,rss=100GB",
                             prompt_tokens=32, gen_tokens=8, runs=3, devices=["cpu"],
                             progress=lambda stage, d, t: seen.append((d, t)))
    assert [v.format for v in report.variants] == ["gguf", "onnx"]
    for v in report.variants:
        assert v.error is None and v.runs == 3 and v.n_prompt == 32 and v.n_gen == 8
        assert v.load_s > 0 and 0 < v.peak_rss_mb < 100_000 and v.file_size_mb > 0
        assert v.ttft_ms["p50"] > 0 and v.itl_ms["p50"] <= v.itl_ms["p99"] and v.decode["avg_ts"] > 0
        assert v.passed and v.budget["passed"] and v.bandwidth_pct is not None
    assert report.any_passed and seen[-1] == (6, 6)  # 2 variants x 3 runs, one bar
    assert report.names() == ["gguf-int4", "onnx-int8"]  # the variants' own names, everywhere
    verdict = report.verdict()
    assert verdict.startswith("ship ") and "meets ttft, tpot, itl_p99, total, rss" in verdict
    hw = report.hardware
    assert hw["cores"] >= 1 and hw["copy_bandwidth_gbs"] > 0 and "llama.cpp" in hw["devices"]
    assert {"llama-cpp-python", "onnxruntime"} <= set(hw["versions"])


def test_a_budget_nobody_meets_exits_1_and_names_the_lines(variants):
    p = _cli("profile", *map(str, variants), "-p", "16", "-n", "4", "-r", "1", "--device", "cpu",
             "--budget", "ttft=0.001ms,rss=1MB", "--json")
    assert p.returncode == 1, p.stderr
    data = json.loads(p.stdout)
    assert set(data) == {"ok", "hardware", "budget", "settings", "variants", "verdict", "warnings"}
    assert all(not v["passed"] and set(v["budget"]["missed"]) == {"ttft", "rss"} for v in data["variants"])
    assert data["verdict"].startswith("no variant meets ttft=0.001ms,rss=1MB; the closest, ")
    md = _cli("profile", str(variants[0]), "-p", "16", "-n", "4", "-r", "1", "--markdown")
    assert md.returncode == 0 and md.stdout.startswith("| artifact | device |")  # no budget: nothing to fail
    csv = _cli("profile", str(variants[0]), "-p", "16", "-n", "4", "-r", "1", "--csv")
    assert csv.stdout.splitlines()[0].startswith("artifact,device,format,quant,size_mb")
    bad = _cli("profile", str(variants[0]), "--budget", "speed=fast")
    assert bad.returncode == 2 and "'speed=fast'" in bad.stderr


def test_a_variant_that_cannot_run_is_reported_not_fatal(variants):
    report = edgekit.profile(variants[:1], prompt_tokens=16, gen_tokens=4, runs=1, devices=["cpu", "cuda"])
    cpu, cuda = report.variants
    assert cpu.error is None and cpu.runs == 1
    assert cuda.error and "DeviceUnavailableError" in cuda.error and not cuda.passed
    long = edgekit.profile(variants[:1], prompt_tokens=250, gen_tokens=100, runs=1, devices=["cpu"])
    assert "exceed the context window of 256" in long.variants[0].error
    with pytest.raises(edgekit.InvalidOptionError, match="gen_tokens"):
        edgekit.profile(variants, gen_tokens=1)


@pytest.fixture()
def slow_gguf(tmp_path, monkeypatch) -> None:
    """Child processes whose llama.cpp backend takes 50 ms more per token, and a profile cache of
    this test's own."""
    from helpers import slow_tokens_env

    for name, value in slow_tokens_env(tmp_path / "site", 0.05).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def test_known_delays_give_known_percentiles_and_verdicts(variants, slow_gguf):
    report = edgekit.profile(variants, "tpot=45ms", prompt_tokens=16, gen_tokens=12, runs=2, devices=["cpu"])
    slow, fast = report.variants
    # 50 ms a token plus the work: the median sits near it; the mean (TPOT) takes a busy machine's spikes
    assert 50 <= slow.itl_ms["p50"] < 200 and slow.tpot_ms["p50"] >= 50
    assert slow.decode["avg_ts"] < 20
    assert not slow.passed and slow.budget["missed"] == ["tpot"] and slow.budget["measured"]["tpot"] >= 50
    assert fast.passed and fast.tpot_ms["p50"] < 45


def test_load_picks_the_most_faithful_variant_that_meets_the_budget(tiny_checkpoint, tmp_path_factory,
                                                                    slow_gguf):
    root = tmp_path_factory.mktemp("choice")
    ckpt = str(tiny_checkpoint("qwen2"))
    precise = edgekit.convert(ckpt, to="gguf", quant="fp16", output=root / "gguf-fp16").path  # slowed
    small = edgekit.convert(ckpt, to="onnx", quant="int8", output=root / "onnx-int8").path
    generous = edgekit.LatencyBudget(tpot_ms=10_000, mode="record")
    with edgekit.load([small, precise], budget=generous, device="cpu") as engine:
        assert engine.path == precise  # fp16 measured closer to the source than int8
        assert "most faithful variant that meets" in str(engine.choice)
        # measured most faithful first, and only until one met the budget
        unneeded = next(c for c in engine.choice.candidates if c["artifact"] == str(small))
        assert unneeded["measured"] is None and unneeded["why"].startswith("not measured")
    # what profile() measured with load()'s settings is what load() reads: nothing is measured again
    from edgekit.quality.choice import CHOICE_SETTINGS

    edgekit.profile([small], devices=["cpu"], **CHOICE_SETTINGS)
    budget = edgekit.LatencyBudget(tpot_ms=30, mode="record")
    with edgekit.load([small, precise], budget=budget, device="cpu") as engine:
        assert engine.path == small and engine.choice.picked == str(small)
        dropped = next(c for c in engine.choice.candidates if c["artifact"] == str(precise))
        assert dropped["why"] == "misses tpot" and dropped["cached"] and "KL" in dropped["fidelity"]
        picked = next(c for c in engine.choice.candidates if c["artifact"] == str(small))
        assert picked["cached"] and picked["passed"] and "from the cached profile" in engine.choice.reason
        assert engine.generate("Hi", max_tokens=2).text is not None
    with edgekit.load([precise, small], budget=budget, device="cpu") as again:  # the cached profile
        assert again.path == small and all(c["cached"] for c in again.choice.candidates)
    with pytest.raises(edgekit.NoVariantFits, match="misses tpot"):
        edgekit.load([small, precise], budget=edgekit.LatencyBudget(tpot_ms=0.001), device="cpu")


def test_the_report_page_shows_its_plot_in_a_real_browser(variants, tmp_path):
    """profile --report writes profile.json, a PNG and index.html; headless Chromium loads the page and
    the plot with it (the page records the image's width once it has loaded)."""
    import shutil

    out = tmp_path / "report"
    p = _cli("profile", *map(str, variants), "-p", "16", "-n", "8", "-r", "2", "--device", "cpu",
             "--budget", "tpot=10s", "--report", str(out))
    assert p.returncode == 0, p.stderr
    assert json.loads((out / "profile.json").read_text())["budget"] == "tpot=10000ms"
    png = (out / "profile.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 20_000
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    assert browser, "Chromium is needed (scripts/test.sh installs Debian's package)"
    headless = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--allow-file-access-from-files"]
    page = (out / "index.html").as_uri()
    dom = subprocess.run([*headless, "--virtual-time-budget=5000", "--dump-dom", page],
                         capture_output=True, text=True, timeout=120)
    assert 'data-plot-width="1320"' in dom.stdout, dom.stdout[-2000:]  # 12 in x 110 dpi, loaded
    assert "gguf-int4" in dom.stdout and "onnx-int8" in dom.stdout
    # the verdict first, above the table and the plot: seen at 1280x800 without scrolling
    assert dom.stdout.index('id="verdict"') < dom.stdout.index("<table") < dom.stdout.index('id="plot"')
    assert ">ship " in dom.stdout and "TTFT p50 (ms)" in dom.stdout and "pp_avg_ts" not in dom.stdout
    shot = tmp_path / "page.png"
    subprocess.run([*headless, "--window-size=1280,800", f"--screenshot={shot}", page],
                   capture_output=True, timeout=120)
    if os.environ.get("EDGEKIT_CAPTURE"):  # to look at
        shutil.copyfile(shot, Path(os.environ["EDGEKIT_CAPTURE"]) / "profile-page.png")
        shutil.copyfile(out / "profile.png", Path(os.environ["EDGEKIT_CAPTURE"]) / "profile.png")
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_run_chooses_among_variants_on_the_command_line(variants, tmp_path, monkeypatch):
    """ARTIFACT,ARTIFACT with --budget: the CLI's load([...]); unverified variants rank by precision."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    both = f"{variants[0]},{variants[1]}"
    p = _cli("run", both, "Hi", "-n", "2", "--device", "cpu", "--budget", "tpot=10s", "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["artifact"] == str(variants[1])  # int8 before int4
    human = _cli("run", both, "Hi", "-n", "2", "--device", "cpu", "--budget", "tpot=10s")
    assert human.returncode == 0 and f"picked {variants[1]}" in human.stderr
    none = _cli("run", both, "Hi", "-n", "2", "--device", "cpu", "--budget", "tpot=0.001ms")
    assert none.returncode == 1 and "no variant meets the budget" in none.stderr


def test_the_report_folder_is_checked_first_and_never_written_through_links(variants, tmp_path):
    """--report naming a file fails before any measuring; in a shared folder where someone planted
    links named profile.json, profile.png and index.html, the report replaces the links and the
    files they point to are untouched."""
    import time

    victim = tmp_path / "victim.txt"
    victim.write_text("do not touch", encoding="utf-8")
    start = time.monotonic()
    p = _cli("profile", str(variants[0]), "-p", "16", "-n", "4", "-r", "1", "--report", str(victim))
    assert p.returncode == 1 and "exists and is not a folder" in p.stderr and "Traceback" not in p.stderr
    assert time.monotonic() - start < 5 and victim.read_text() == "do not touch"  # nothing was measured
    shared = tmp_path / "shared"
    shared.mkdir()
    for name in ("profile.json", "profile.png", "index.html"):
        (shared / name).symlink_to(victim)
    p = _cli("profile", str(variants[0]), "-p", "16", "-n", "4", "-r", "1", "--device", "cpu",
             "--report", str(shared))
    assert p.returncode == 0, p.stderr
    assert victim.read_text() == "do not touch"
    for name in ("profile.json", "profile.png", "index.html"):
        assert not (shared / name).is_symlink() and (shared / name).stat().st_size > 0
    assert json.loads((shared / "profile.json").read_text())["variants"]
    assert not [p for p in shared.iterdir() if p.name.endswith(".partial")]


def test_the_terminal_says_the_verdict_first_in_100_columns(variants):
    p = _cli("profile", *map(str, variants), "-p", "16", "-n", "4", "-r", "1", "--device", "cpu",
             "--budget", "tpot=10s")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("ship ") and "meets tpot" in lines[0]
    assert max(map(len, lines)) <= 100, p.stdout
    assert "gguf-int4" in p.stdout and "onnx-int8" in p.stdout and "fidelity" in p.stdout
