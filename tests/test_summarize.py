"""edgekit summarize on a tiny random model: map-reduce in rounds over documents many times its context,
memory flat with length, folders with resume and per-file failures, the CLI's outputs, no network."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import corpus
import pytest

import edgekit
from edgekit.summaries.summarizer import INDEX_NAME, repeated_ngram


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`edgekit summarize ARGS`: in this process, or a real one where env must reach a new
    interpreter (a sitecustomize on PYTHONPATH)."""
    if env is None:
        from helpers import cli

        return cli("summarize", *args)
    return subprocess.run([sys.executable, "-m", "edgekit.cli", "summarize", *args], capture_output=True,
                          text=True, env=env, timeout=600)


CTX = 512  # the context the tests give the tiny model: its chat prompt alone takes ~130 tokens


def _long(tmp: Path, pages: int, ext: str = ".md") -> Path:
    return corpus.write(tmp / f"long-{pages}{ext}", corpus.long_sections(pages), "Field notes")


def test_a_document_many_times_the_context_is_reduced_in_rounds(tiny_model, tmp_path):
    doc = _long(tmp_path, 8)
    seen, streamed = [], []
    with edgekit.load(tiny_model, n_ctx=CTX) as eng:
        window = eng.context_length
        s = edgekit.summarize(
            doc,
            eng,
            words=12,
            chunk_tokens=200,
            overlap=24,
            progress=lambda stage, d, t: seen.append((d, t, stage)),
            on_text=streamed.append,
        )
        tokens = eng.count_tokens(corpus_text(doc))
    assert tokens > 20 * window  # the document is more than 20 context windows long
    d = s.to_dict()
    assert d["document"]["chunks"] == len(s.chunks) > 20 and d["document"]["rounds"] >= 2
    assert all(st.tokens_in + st.tokens_out <= window for st in s.steps)  # every call fitted
    assert [st.kind for st in s.steps].count("reduce") >= 2
    assert "".join(streamed).strip() == s.summary  # the final step streamed, and only it
    assert seen[-1][0] == seen[-1][1] == len(s.steps)  # the bar ends full, with every step counted
    assert d["tokens"]["prompt"] == sum(st.tokens_in for st in s.steps) > tokens
    t = d["timings"]
    assert t["model_s"] == pytest.approx(t["prefill_s"] + t["decode_s"], abs=1e-3)
    assert t["total_s"] == pytest.approx(t["model_s"] + t["outside_s"], abs=1e-3)
    assert repeated_ngram(s.summary) is None and all(repeated_ngram(st.summary) is None for st in s.steps)


def corpus_text(path: Path) -> str:
    from edgekit.summaries.documents import read_document

    return read_document(path).text


_PEAK = textwrap.dedent("""
    import sys, edgekit, edgekit.summaries.documents
    from edgekit.metrics import peak_rss_mb
    with edgekit.load(sys.argv[1], n_ctx=512) as eng:
        eng.chat("warm up", max_tokens=4)
        base = peak_rss_mb()
        s = edgekit.summarize(sys.argv[2], eng, words=12, chunk_tokens=200, overlap=24)
        tokens = eng.count_tokens(edgekit.summaries.documents.read_document(sys.argv[2]).text)
    print(base, peak_rss_mb(), tokens, s.document["chunks"])
""")


@pytest.mark.system  # peak RSS of real processes
def test_memory_stays_flat_from_one_context_to_twenty(tiny_model, tmp_path):
    """Peak RSS of a process summarizing a document of one context window and one of 20+: the same
    within 10%."""
    short = corpus.write(tmp_path / "short.md", corpus.sections("Coffee"))
    docs = {"short": short, "long": _long(tmp_path, 8)}
    peaks = {}
    for name, doc in docs.items():
        out = subprocess.run(
            [sys.executable, "-c", _PEAK, str(tiny_model), str(doc)],
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        ).stdout.split()
        peaks[name] = (float(out[0]), float(out[1]), int(out[2]), int(out[3]))
    assert peaks["short"][2] <= CTX and peaks["long"][2] > 20 * CTX, peaks  # one window, and twenty
    assert peaks["long"][3] > 20 * peaks["short"][3]
    assert peaks["long"][1] <= peaks["short"][1] * 1.10, peaks


@pytest.fixture()
def folder(tmp_path) -> Path:
    root = tmp_path / "docs"
    corpus.write(root / "bees.txt", corpus.sections("Honeybees"))
    corpus.write(root / "sub" / "chess.pdf", corpus.sections("Chess"))
    corpus.write(root / "sub" / "deeper" / "jazz.docx", corpus.sections("Jazz"))
    corpus.write(root / "reefs.html", corpus.sections("Coral reefs"), "Reefs")
    (root / "empty.md").write_text("", encoding="utf-8")
    (root / "sub" / "noise.txt").write_bytes(bytes(range(256)) * 8)
    (root / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # not a document type: not picked up
    (root / ".hidden.txt").write_text("a hidden file", encoding="utf-8")
    return root


def test_a_folder_run_reports_failures_resumes_and_redoes_changed_files(tiny_model, folder, tmp_path):
    out = tmp_path / "summaries"
    args = [
        str(folder),
        "-m",
        str(tiny_model),
        "-c",
        str(CTX),
        "-r",
        "-o",
        str(out),
        "--words",
        "12",
        "--chunk-tokens",
        "150",
    ]
    first = _cli(*args, "--json")
    assert first.returncode == 1, first.stderr  # two files failed
    report = json.loads(first.stdout)["run"]
    by_name = {f["name"]: f for f in report["files"]}
    assert set(by_name) == {
        "bees.txt",
        "reefs.html",
        "empty.md",
        "sub/chess.pdf",
        "sub/noise.txt",
        "sub/deeper/jazz.docx",
    }
    assert report["counts"] == {"ok": 4, "skipped": 0, "failed": 2}
    assert "empty" in by_name["empty.md"]["error"]
    assert "does not look like text" in by_name["sub/noise.txt"]["error"]
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [
        INDEX_NAME,
        "bees.txt.md",
        "reefs.html.md",
        "sub/chess.pdf.md",
        "sub/deeper/jazz.docx.md",
    ]
    assert (out / "bees.txt.md").read_text().startswith("# Summary of bees.txt\n\n")
    assert "Traceback" not in first.stderr

    (folder / "bees.txt").write_text("Bees changed their minds. " * 30, encoding="utf-8")
    (folder / "empty.md").write_text("# Now\n\nIt has text.", encoding="utf-8")
    second = _cli(*args)  # human output: a line per file, then the counts
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert "2 summarized, 3 already done, 1 failed" in second.stderr
    assert second.stderr.count("skip ") == 3 and "failed  " in second.stderr
    records = [json.loads(line) for line in (out / INDEX_NAME).read_text().splitlines()]
    assert [r["name"] for r in records].count("bees.txt") == 2 and len(records) == 6 + 3
    assert (out / "empty.md.md").is_file()

    third = _cli(*args, "--no-resume", "--json")
    assert json.loads(third.stdout)["run"]["counts"] == {"ok": 5, "skipped": 0, "failed": 1}


def test_one_document_streams_its_summary_and_reports_json(tiny_model, tmp_path):
    doc = corpus.write(tmp_path / "notes.md", corpus.sections("Coffee"), "Coffee")
    md = _cli(str(doc), "-m", str(tiny_model), "-c", str(CTX), "--words", "12")
    assert md.returncode == 0, md.stderr
    assert md.stdout.startswith("# Summary of notes.md\n\n") and "*edgekit, " in md.stdout
    assert "outside the model" in md.stderr
    txt = _cli(str(doc), "-m", str(tiny_model), "-c", str(CTX), "--words", "12", "-f", "txt")
    body = md.stdout.split("\n\n", 1)[1].rsplit("\n\n*edgekit", 1)[0].strip()
    assert txt.stdout.strip() == body  # greedy: the same summary, without heading and footer
    js = _cli(str(doc), "-m", str(tiny_model), "-c", str(CTX), "--words", "12", "--json")
    data = json.loads(js.stdout)["summary"]
    assert data["summary"] == body and data["model"]["format"] == "onnx"
    assert data["document"]["kind"] == "markdown"
    timings = {"read_s", "chunk_s", "prefill_s", "decode_s", "model_s", "outside_s", "total_s"}
    assert timings <= set(data["timings"])
    assert data["tokens"]["document"] > 0 and data["steps"][0]["kind"] == "map"
    same = json.loads(
        _cli(str(doc), "-m", str(tiny_model), "-c", str(CTX), "--words", "12", "-f", "json").stdout
    )
    assert same["summary"]["summary"] == body  # --format json on one document is --json


@pytest.mark.parametrize(
    "args,code,says",
    [
        (["missing.pdf"], 1, "missing.pdf: no such file"),
        (["data.xyz"], 1, "unsupported file type ('.xyz')"),
        (["doc.md", "--format", "yaml"], 2, "choose one of txt, md, json"),
        (["doc.md", "--words", "3"], 1, "words must be a whole number from 10 to 2000"),
        (["doc.md", "--ctx-size", "200"], 1, "context window of 200 tokens"),
        (["doc.md", "--words", "200", "--chunk-tokens", "300"], 1, "chunks of 300 tokens are too small"),
        (["doc.md", "--strategy", "stuff"], 1, "strategy must be one of map-reduce, refine"),
    ],
)
def test_bad_requests_exit_with_a_message(args, code, says, tiny_model, tmp_path):
    corpus.write(tmp_path / "doc.md", corpus.sections("Coffee", repeat=3))  # longer than 200 words
    (tmp_path / "data.xyz").write_text("text", encoding="utf-8")
    from helpers import cli

    p = cli("summarize", *args, "-m", str(tiny_model), cwd=tmp_path)
    assert p.returncode == code and says in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_refine_carries_one_running_summary(tiny_model, tmp_path):
    doc = _long(tmp_path, 1)
    with edgekit.load(tiny_model, n_ctx=CTX) as eng:
        s = edgekit.summarize(doc, eng, words=12, chunk_tokens=120, strategy="refine")
    kinds = [st.kind for st in s.steps]
    assert kinds[0] == "map" and kinds[1:] == ["refine"] * (len(kinds) - 1) and len(kinds) > 2
    assert s.summary == s.steps[-1].summary


_NO_NETWORK = textwrap.dedent("""
    import socket
    def refuse(*args, **kwargs):
        raise OSError("network use refused by the test")
    socket.socket.connect = refuse
    socket.socket.connect_ex = refuse
    socket.create_connection = refuse
    socket.getaddrinfo = refuse
""")


@pytest.mark.system  # a real process with its sockets guarded
def test_nothing_touches_the_network(tiny_model, tmp_path):
    import os

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_NO_NETWORK, encoding="utf-8")
    doc = corpus.write(tmp_path / "doc.pdf", corpus.sections("Lighthouses"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    p = _cli(str(doc), "-m", str(tiny_model), "-c", str(CTX), "--words", "12", "-f", "txt", env=env)
    assert p.returncode == 0 and p.stdout.strip(), p.stderr
    connect = "import socket; socket.create_connection(('127.0.0.1', 9))"
    probe = subprocess.run([sys.executable, "-c", connect], env=env, capture_output=True, text=True)
    assert "network use refused" in probe.stderr  # the guard is really in place


def test_summaries_inside_the_folder_are_not_read_as_documents(tiny_model, tmp_path):
    docs = tmp_path / "docs"
    corpus.write(docs / "a.md", corpus.sections("Coffee"))
    args = [str(docs), "-r", "-m", str(tiny_model), "-c", str(CTX), "-w", "12", "-o", str(docs / "summaries")]
    for _ in range(2):
        assert _cli(*args).returncode == 0
    written = sorted(p.name for p in (docs / "summaries").iterdir())
    assert written == [INDEX_NAME, "a.md.md"]  # no summary of a summary


def test_a_folder_is_not_left_through_links_and_odd_entries_are_named(tiny_model, tmp_path):
    """A link to a file outside the folder (/etc/passwd renamed as a document), a link to a folder
    outside it, a dangling link and a FIFO: none is opened (a FIFO would block the run); each is
    named with its reason, in the report and on the terminal. --follow-links follows the first two."""
    import os

    outside = tmp_path / "outside"
    corpus.write(outside / "secret.txt", corpus.sections("Volcanoes"))
    corpus.write(outside / "more" / "notes.md", corpus.sections("Chess"))
    docs = tmp_path / "docs"
    corpus.write(docs / "a.md", corpus.sections("Coffee"))
    corpus.write(docs / "inner" / "b.txt", corpus.sections("Jazz"))
    (docs / "passwd.txt").symlink_to(outside / "secret.txt")
    (docs / "linked").symlink_to(outside / "more", target_is_directory=True)
    (docs / "gone.txt").symlink_to(tmp_path / "nothing.txt")
    (docs / "inside.txt").symlink_to(docs / "inner" / "b.txt")  # stays inside: read
    os.mkfifo(docs / "pipe.txt")
    args = [str(docs), "-r", "-m", str(tiny_model), "-c", str(CTX), "-w", "12", "--chunk-tokens", "150"]
    p = _cli(*args, "--json")
    assert p.returncode == 0, p.stderr
    run = json.loads(p.stdout)["run"]
    assert sorted(f["name"] for f in run["files"]) == ["a.md", "inner/b.txt", "inside.txt"]
    why = {i["name"]: i["why"] for i in run["ignored"]}
    assert set(why) == {"passwd.txt", "linked", "gone.txt", "pipe.txt"}, why
    assert "outside the folder" in why["passwd.txt"] and "outside the folder" in why["linked"]
    assert why["gone.txt"] == "a link to nothing" and "FIFO" in why["pipe.txt"]
    human = _cli(*args)
    assert human.returncode == 0 and "not read: passwd.txt: a link to" in human.stderr
    followed = json.loads(_cli(*args, "--follow-links", "--json").stdout)["run"]
    assert sorted(f["name"] for f in followed["files"]) == [
        "a.md", "inner/b.txt", "inside.txt", "linked/notes.md", "passwd.txt"]


def test_two_runs_into_one_folder_cannot_both_work(tiny_model, tmp_path):
    """The second run into an -o folder that a run holds stops at once, naming the holder; the
    folder's index is the first run's alone."""
    from edgekit.artifact import output_lock

    docs = tmp_path / "docs"
    corpus.write(docs / "a.md", corpus.sections("Coffee"))
    out = tmp_path / "summaries"
    out.mkdir()
    with output_lock(out / INDEX_NAME, "summarize run"):  # a run holding the folder now
        p = _cli(str(docs), "-m", str(tiny_model), "-c", str(CTX), "-w", "12", "-o", str(out))
        assert p.returncode == 1 and "another summarize run" in p.stderr and "Traceback" not in p.stderr
        with pytest.raises(edgekit.OutputExistsError):
            edgekit.summarize_many([docs], tiny_model, out, 12, n_ctx=CTX)
    assert not (out / INDEX_NAME).exists()
    assert _cli(str(docs), "-m", str(tiny_model), "-c", str(CTX), "-w", "12", "-o", str(out)).returncode == 0


def test_a_document_no_longer_than_the_summary_is_returned_as_it_is(tiny_model, tmp_path):
    """A one-word file (or one shorter than the words asked) is its own summary: returned whole with a
    note, and the model is not asked to invent the rest."""
    (tmp_path / "one.txt").write_text("Hello.\n", encoding="utf-8")
    with edgekit.load(tiny_model, n_ctx=CTX) as eng:
        streamed: list[str] = []
        s = edgekit.summarize(tmp_path / "one.txt", eng, words=20, on_text=streamed.append)
    assert s.summary == "Hello." and streamed == ["Hello."] and s.steps == []
    assert s.document["chunks"] == 0 and "it is its own summary" in s.warnings[0]
    p = _cli(str(tmp_path / "one.txt"), "-m", str(tiny_model), "--words", "20")
    assert p.returncode == 0 and "Hello." in p.stdout and "its own summary" in p.stderr, p.stderr


def test_an_engine_decoding_several_streams_summarizes_its_chunks_together(tiny_model, tmp_path):
    """On an engine loaded with parallel=4, the chunks' summaries (and each round's combinations) are
    asked at once and decoded together: the same summary, the steps in the same order, and the model
    time counted once where calls ran side by side."""
    doc = _long(tmp_path, 3)
    with edgekit.load(tiny_model, n_ctx=CTX) as eng:
        alone = edgekit.summarize(doc, eng, words=12, chunk_tokens=200, overlap=24)
    seen: list[tuple[int, int, str]] = []
    with edgekit.load(tiny_model, n_ctx=4 * CTX, parallel=4) as eng:
        together = edgekit.summarize(doc, eng, words=12, chunk_tokens=200, overlap=24,
                                     progress=lambda stage, d, t: seen.append((d, t, stage)))
    assert together.summary == alone.summary and together.document["chunks"] == alone.document["chunks"] > 4
    assert [(st.kind, st.index, st.round, st.summary) for st in together.steps] == [
        (st.kind, st.index, st.round, st.summary) for st in alone.steps]
    t = together.timings
    assert t["model_s"] < t["prefill_s"] + t["decode_s"] and 0 <= t["outside_s"] < t["total_s"]
    assert seen[-1][0] == seen[-1][1] == len(together.steps)
    # the same through a model summarize opens, and through the command line
    opened = edgekit.summarize(doc, tiny_model, words=12, chunk_tokens=200, overlap=24, n_ctx=4 * CTX,
                               parallel=4)
    assert opened.summary == alone.summary
    p = _cli(str(doc), "-m", str(tiny_model), "--words", "12", "--chunk-tokens", "200", "--overlap", "24",
             "-c", str(4 * CTX), "--parallel", "4", "--json")
    assert p.returncode == 0, p.stderr
    with edgekit.load(tiny_model, n_ctx=CTX) as eng:  # as the command line asks: streaming the final text
        shown = edgekit.summarize(doc, eng, words=12, chunk_tokens=200, overlap=24, on_text=lambda _: None)
    assert json.loads(p.stdout)["summary"]["summary"] == shown.summary
    with edgekit.load(tiny_model, n_ctx=CTX) as eng:
        with pytest.raises(edgekit.InvalidOptionError, match="parallel applies to a model summarize opens"):
            edgekit.summarize(doc, eng, words=12, parallel=2)
