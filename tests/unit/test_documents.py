"""Document readers on files the tests write: structure kept for every format, and a clear DocumentError
naming the file for everything that is not a readable document."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # corpus.py

import corpus  # noqa: E402

from edgekit.errors import DocumentError, EdgekitError  # noqa: E402
from edgekit.summaries.documents import read_document  # noqa: E402

PARTS = corpus.sections("Volcanoes") + corpus.sections("Chess")


@pytest.mark.parametrize("ext", [".txt", ".md", ".html", ".pdf", ".docx"])
def test_every_format_keeps_its_paragraphs_in_order(ext, tmp_path):
    doc = read_document(corpus.write(tmp_path / f"doc{ext}", PARTS, "Two topics"))
    text = doc.text
    paragraphs = [p for _, ps in PARTS for p in ps]
    positions = [text.find(p[:60]) for p in paragraphs]
    assert all(p >= 0 for p in positions) and positions == sorted(positions), (ext, positions)
    assert "not text" not in text and "color:red" not in text  # HTML: scripts and styles dropped
    headings = [b.text for b in doc.blocks if b.kind == "heading"]
    if ext != ".txt" and ext != ".pdf":  # these two carry no heading markup
        assert headings[-2:] == ["Volcanoes", "Chess"] and "Two topics" in headings[0]
    assert doc.words >= sum(len(p.split()) for p in paragraphs)
    if ext == ".pdf":
        assert doc.pages == 1


def test_markdown_structure_and_inline_markup(tmp_path):
    src = tmp_path / "notes.md"
    src.write_text(
        "Title\n=====\n\nSome **bold** and [a link](http://x) and `code`.\n"
        "wrapped line\n\n- item one\n- item two\n\n### Deep *heading* ###\n\n```\nkeep = 1\n```\n"
        "\n| input | result |\n|---|:---:|\n| empty file | refused |\n",
        encoding="utf-8",
    )
    blocks = read_document(src).blocks
    assert [(b.kind, b.level, b.text) for b in blocks] == [
        ("heading", 1, "Title"),
        ("paragraph", 0, "Some bold and a link and code. wrapped line"),
        ("paragraph", 0, "item one"),
        ("paragraph", 0, "item two"),
        ("heading", 3, "Deep heading"),
        ("paragraph", 0, "keep = 1"),
        ("paragraph", 0, "input; result"),  # a table: one line per row, the |---| rule left out
        ("paragraph", 0, "empty file; refused"),
    ]


@pytest.mark.parametrize("encoding", ["cp1252", "utf-16", "utf-8-sig"])
def test_text_in_other_encodings(encoding, tmp_path):
    text = (
        "Le café de la gare ouvre à sept heures. On y sert des croissants, du pain au chocolat et une "
        "crème brûlée très appréciée des habitués. Le propriétaire, François, a hérité de "
        "l'établissement de sa grand-mère en 1998. Les prix sont affichés en euros et la terrasse donne "
        "sur la rivière où "
        "les pêcheurs s'installent dès l'aube."
    )
    path = tmp_path / "menu.txt"
    path.write_bytes(text.encode(encoding))
    assert read_document(path).text == text.strip()


def _image_only_pdf(path: Path) -> Path:
    from reportlab.pdfgen import canvas

    c = canvas.Canvas(str(path))
    c.rect(100, 100, 200, 300, fill=1)  # a drawing, no text: what a scan without OCR looks like
    c.showPage()
    c.save()
    return path


def _encrypted_pdf(path: Path, tmp_path: Path) -> Path:
    import pypdf

    plain = corpus.write(tmp_path / "plain.pdf", PARTS)
    writer = pypdf.PdfWriter(clone_from=str(plain))
    writer.encrypt(user_password="secret", algorithm="RC4-128")
    with open(path, "wb") as f:
        writer.write(f)
    return path


def _bad(kind: str, tmp_path: Path) -> Path:
    p = (
        tmp_path
        / {
            "empty": "empty.txt",
            "binary": "random.txt",
            "png": "photo.txt",
            "pdf-as-txt": "paper.txt",
            "unknown": "data.xyz",
            "noext": "README",
            "image-pdf": "scan.pdf",
            "encrypted": "locked.pdf",
            "garbage-pdf": "fake.pdf",
            "truncated-docx": "cut.docx",
            "zip-docx": "other.docx",
            "text-docx": "letter.docx",
            "blank-md": "blank.md",
            "deep-html": "deep.html",
            "deep-inline-html": "inline.html",
            "bomb-docx": "bomb.docx",
            "bomb-ratio-docx": "ratio.docx",
            "huge-html": "huge.html",
        }[kind]
    )
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "binary":
        p.write_bytes(bytes(range(256)) * 40)
    elif kind == "png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    elif kind == "pdf-as-txt":
        p.write_bytes(corpus.write(tmp_path / "real.pdf", PARTS).read_bytes())
    elif kind in ("unknown", "noext"):
        p.write_text("some text", encoding="utf-8")
    elif kind == "image-pdf":
        _image_only_pdf(p)
    elif kind == "encrypted":
        _encrypted_pdf(p, tmp_path)
    elif kind == "garbage-pdf":
        p.write_bytes(b"%PDF-1.7\n" + b"\x00garbage" * 100)
    elif kind == "truncated-docx":
        whole = corpus.write(tmp_path / "whole.docx", PARTS).read_bytes()
        p.write_bytes(whole[: len(whole) // 2])
    elif kind == "zip-docx":
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("hello.txt", "not a word document")
    elif kind == "text-docx":
        p.write_text("Dear Sir, this is plain text with the wrong name.", encoding="utf-8")
    elif kind == "deep-html":
        p.write_text("<html><body>" + "<div>" * 20000 + "deep" + "</div>" * 20000 + "</body></html>")
    elif kind == "deep-inline-html":  # never closed: counted as open all the same
        p.write_text("<p>" + "<span><b>" * 3000 + "text")
    elif kind in ("bomb-docx", "bomb-ratio-docx"):  # a real document whose body inflates far past it
        size = 65 * 2**20 if kind == "bomb-docx" else 9 * 2**20
        whole = corpus.write(tmp_path / "whole.docx", PARTS)
        with zipfile.ZipFile(whole) as src, zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                data = src.read(info)
                if info.filename == "word/document.xml":
                    data = data.replace(b"</w:body>", b"<!--" + b" " * size + b"--></w:body>")
                dst.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)
    elif kind == "huge-html":  # sparse: 33 MB on disk costs nothing to make
        with open(p, "wb") as f:
            f.write(b"<p>hi</p>")
            f.truncate(33 * 2**20)
    elif kind == "blank-md":
        p.write_text("\n\n   \n\t\n", encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "kind,says",
    [
        ("empty", "empty"),
        ("binary", "does not look like text"),
        ("png", "is a PNG image"),
        ("pdf-as-txt", "rename it to .pdf"),
        ("unknown", "unsupported file type ('.xyz')"),
        ("noext", "unsupported file type (no extension)"),
        ("image-pdf", "no extractable text"),
        ("encrypted", "encrypted"),
        ("garbage-pdf", "not a readable PDF"),
        ("truncated-docx", "not a valid DOCX"),
        ("zip-docx", "not a valid DOCX"),
        ("text-docx", "not a valid DOCX"),
        ("blank-md", "no text"),
        ("deep-html", "nests its elements 20000 deep"),
        ("deep-inline-html", "nests its elements 6000 deep"),
        ("bomb-docx", "inflates from"),
        ("bomb-ratio-docx", "a compression bomb"),
        ("huge-html", "more than the 32 MB edgekit reads as one html document"),
    ],
)
def test_what_is_not_a_readable_document_says_so(kind, says, tmp_path):
    path = _bad(kind, tmp_path)
    with pytest.raises(DocumentError) as err:
        read_document(path)
    assert str(path) in str(err.value) and says in str(err.value), str(err.value)
    assert isinstance(err.value, EdgekitError) and err.value.path == str(path)


def test_a_missing_file_and_a_folder(tmp_path):
    with pytest.raises(DocumentError, match="no such file"):
        read_document(tmp_path / "gone.txt")
    (tmp_path / "dir.md").mkdir()
    with pytest.raises(DocumentError, match="not a file"):
        read_document(tmp_path / "dir.md")


def test_a_pdf_with_an_empty_password_opens(tmp_path):
    import pypdf

    writer = pypdf.PdfWriter(clone_from=str(corpus.write(tmp_path / "p.pdf", PARTS)))
    writer.encrypt(user_password="", owner_password="owner", algorithm="RC4-128")  # restricts, no password
    with open(tmp_path / "restricted.pdf", "wb") as f:
        writer.write(f)
    assert "Mount St. Helens" in read_document(tmp_path / "restricted.pdf").text


@pytest.mark.parametrize("line", ["*a*a " * 16000, "_a_a " * 16000, "**a " * 20000, "[a " * 30000,
                                  "![a " * 20000, "<a " * 30000])
def test_unclosed_markdown_markup_is_read_in_linear_time(line, tmp_path):
    """80 KB of markup that never closes: each span is bounded, so a line costs linear time (the
    first case took 40 s when a span could run to the end of the line). The bound below only tells
    a regression (tens of seconds) from the fix (a fraction of a second)."""
    import time

    path = tmp_path / "line.md"
    path.write_text(line, encoding="utf-8")
    start = time.perf_counter()
    assert read_document(path).text
    assert time.perf_counter() - start < 10


def test_a_web_pages_furniture_is_left_out(tmp_path):
    """Navigation, footers, sidebars and cookie banners (by element, ARIA role, id or class) are not
    the document: only the article's headings and paragraphs are read."""
    page = tmp_path / "page.html"
    page.write_text(
        "<html><body><header><nav><a href='/'>Home</a> <a href='/blog'>Blog</a></nav></header>"
        "<div id='cookie-banner'>We use cookies. <button>Accept all</button></div>"
        "<div role='navigation'>Skip to content</div>"
        "<main><article><h1>Beekeeping in winter</h1><p>Bees cluster around the queen.</p>"
        "<p>They shiver to keep warm.</p><div class='share-buttons'>Share on social media</div></article>"
        "<aside>Related posts: ten facts about wasps</aside></main>"
        "<div class='newsletter'>Subscribe to our newsletter</div>"
        "<footer>Copyright 2026, all rights reserved</footer></body></html>", encoding="utf-8")
    doc = read_document(page)
    assert [b.text for b in doc.blocks] == ["Beekeeping in winter", "Bees cluster around the queen.",
                                            "They shiver to keep warm."]
    for furniture in ("cookies", "Skip to content", "Share on", "Related posts", "newsletter", "Copyright"):
        assert furniture not in doc.text, furniture
