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


# ---- DOCX read as a stream ----------------------------------------------------------------------
_NS = ('xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main" '
       'xmlns:mc="http://schemas.openxmlformats.org/markup-compatibility/2006" '
       'xmlns:wps="http://schemas.microsoft.com/office/word/2010/wordprocessingShape" '
       'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"')
_REL = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"


def _docx(path: Path, body: str, styles: str = "", doctype: str = "") -> Path:
    """A Word package written by hand: the parts a reader needs, the main part where the package's
    relationships say (not at its usual name), and styles with ids unlike their names."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types '
                   'xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>')
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.'
                   f'org/package/2006/relationships"><Relationship Id="rId1" Type="{_REL}/officeDocument" '
                   'Target="word/main.xml"/></Relationships>')
        z.writestr("word/_rels/main.xml.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.'
                   f'openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="{_REL}/'
                   'styles" Target="styles.xml"/></Relationships>')
        z.writestr("word/styles.xml", f'<?xml version="1.0"?><w:styles {_NS}>{styles}</w:styles>')
        z.writestr("word/main.xml", f'<?xml version="1.0"?>{doctype}<w:document {_NS}><w:body>{body}'
                   '<w:sectPr/></w:body></w:document>')
    return path


def _p(text: str, style: str = "") -> str:
    pstyle = f'<w:pPr><w:pStyle w:val="{style}"/></w:pPr>' if style else ""
    return f'<w:p>{pstyle}<w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'


def test_docx_structure_from_the_package_itself(tmp_path):
    """Headings by the style's name (Title, "heading 2"), whatever its id; hyperlinks, tabs and breaks
    in a paragraph's text; a text box (drawn in two alternatives) and a content control left out, as
    Word's own text of the body has them; tables row by row, a nested table inside its cell."""
    styles = ('<w:style w:type="paragraph" w:styleId="Big"><w:name w:val="Title"/></w:style>'
              '<w:style w:type="paragraph" w:styleId="H2x"><w:name w:val="heading 2"/></w:style>'
              '<w:style w:type="paragraph" w:styleId="Quote"><w:name w:val="Quote"/></w:style>')
    box = ('<w:r><mc:AlternateContent><mc:Choice Requires="wps"><wps:txbx><w:txbxContent>'
           f'{_p("BOX")}</w:txbxContent></wps:txbx></mc:Choice><mc:Fallback>{_p("BOX")}</mc:Fallback>'
           '</mc:AlternateContent></w:r>')
    cell = '<w:tc>{}</w:tc>'
    nested = f'<w:tbl><w:tr>{cell.format(_p("inner"))}</w:tr></w:tbl>'
    body = (_p("A report", "Big") + _p("Findings", "H2x")
            + '<w:p><w:r><w:t>one</w:t><w:tab/><w:t>two</w:t><w:br/></w:r><w:hyperlink r:id="rId9"><w:r>'
              '<w:t xml:space="preserve"> a link</w:t></w:r></w:hyperlink>' + box + '</w:p>'
            + '<w:sdt><w:sdtContent>' + _p("table of contents") + '</w:sdtContent></w:sdt>'
            + '<w:tbl><w:tr>' + cell.format(_p("a") + _p("b")) + cell.format(_p("c")) + cell.format("")
            + '</w:tr><w:tr>' + cell.format(_p("d") + nested) + '</w:tr></w:tbl>'
            + _p("A quotation", "Quote") + _p("Unknown style", "Nowhere"))
    blocks = read_document(_docx(tmp_path / "hand.docx", body, styles)).blocks
    assert [(b.kind, b.level, b.text) for b in blocks] == [
        ("heading", 1, "A report"),
        ("heading", 2, "Findings"),
        ("paragraph", 0, "one two a link"),
        ("paragraph", 0, "a b | c"),
        ("paragraph", 0, "d inner"),
        ("paragraph", 0, "A quotation"),
        ("paragraph", 0, "Unknown style"),
    ]


@pytest.mark.parametrize("doctype", ['<!DOCTYPE w:document [<!ENTITY a "aaaaaaaaaa">]>',
                                     '<!DOCTYPE w:document SYSTEM "http://example.com/x.dtd">'])
def test_a_docx_declaring_a_dtd_is_refused(doctype, tmp_path):
    with pytest.raises(DocumentError, match="declares a DTD"):
        read_document(_docx(tmp_path / "dtd.docx", _p("text"), doctype=doctype))


def test_a_docx_without_a_main_part_or_with_broken_xml(tmp_path):
    broken = _docx(tmp_path / "broken.docx", "<w:p><w:r><w:t>unclosed</w:r></w:p>")
    with pytest.raises(DocumentError, match="not a valid DOCX"):
        read_document(broken)
    empty = tmp_path / "empty.docx"
    with zipfile.ZipFile(empty, "w") as z:
        z.writestr("_rels/.rels", '<?xml version="1.0"?><Relationships xmlns="http://schemas.'
                   'openxmlformats.org/package/2006/relationships"/>')
    with pytest.raises(DocumentError, match="no main document part"):
        read_document(empty)


def test_a_large_docx_is_read_in_memory_of_its_text(tmp_path):
    """3 MB of paragraphs (the XML), read in one pass: Python's allocations peak at about what is read
    (the text and its blocks; python-docx's tree took about six times the XML), and all of it is read."""
    import random
    import tracemalloc

    rng = random.Random(0)
    words = [w for facts in corpus.TOPICS.values() for fact in facts for w in fact.split()]
    paragraphs = [" ".join(rng.choice(words) for _ in range(40)) for _ in range(10_000)]
    body = "".join(_p(text, "Normal") for text in paragraphs)
    path = _docx(tmp_path / "large.docx", body)
    xml_bytes = len(body)
    tracemalloc.start()
    try:
        blocks = read_document(path).blocks
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [b.text for b in blocks] == paragraphs
    text_bytes = sum(map(len, paragraphs))
    assert xml_bytes > 3e6 and peak < 2 * text_bytes and peak < 1.5 * xml_bytes, (peak, text_bytes, xml_bytes)
