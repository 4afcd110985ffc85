"""Documents to summarize: plain text, Markdown, HTML, PDF and DOCX read into headings and paragraphs.

Each reader keeps the document's structure (headings with their level, paragraphs in order) so that
chunking can cut at section and paragraph boundaries. Every failure is a DocumentError naming the file
and what is wrong with it: an empty file, a binary file with a text extension, an encrypted or
image-only PDF, a damaged DOCX, an extension edgekit does not read.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.errors import DocumentError, require

# past these sizes a "document" is almost surely not one: the markup formats are parsed whole in
# memory (a few times their size), so their caps are lower than those of the paged formats
MAX_FILE_BYTES = {"text": 64 * 2**20, "markdown": 64 * 2**20, "html": 32 * 2**20, "pdf": 512 * 2**20,
                  "docx": 512 * 2**20}
# elements nested deeper than this refuse an HTML file before it is parsed (the parse of deep
# nesting is quadratic); pages written by people or tools nest a few dozen deep
MAX_HTML_DEPTH = 256
# a DOCX is a zip: what its members inflate to is capped, absolutely and against the file's size
# (Word's XML packs 5 to 20 times; a bomb packs a thousand)
MAX_INFLATED_BYTES = 64 * 1024 * 1024
MAX_INFLATE_RATIO = 100


@dataclass(frozen=True)
class Block:
    text: str
    kind: str = "paragraph"  # or "heading"
    level: int = 0  # 1-6 for headings


@dataclass
class Document:
    path: Path
    kind: str  # "text", "markdown", "html", "pdf", "docx"
    blocks: list[Block] = field(default_factory=list)
    pages: int | None = None  # PDF only

    @property
    def text(self) -> str:
        return "\n\n".join(b.text for b in self.blocks)

    @property
    def words(self) -> int:
        return sum(len(b.text.split()) for b in self.blocks)


def file_hash(path: str | Path) -> str:
    """sha256 of a file's bytes, read in 1 MB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def read_document(path: str | Path) -> Document:
    """Read a .txt, .md, .html, .pdf or .docx file into headings and paragraphs."""
    path = Path(path)
    reader = READERS.get(path.suffix.lower())
    if reader is None:
        what = f"'{path.suffix}'" if path.suffix else "no extension"
        raise DocumentError(path, f"unsupported file type ({what}); edgekit reads {', '.join(SUFFIXES)}")
    if not path.exists():
        raise DocumentError(path, "no such file")
    if not path.is_file():
        raise DocumentError(path, "not a file")
    size = path.stat().st_size
    if size == 0:
        raise DocumentError(path, "the file is empty: nothing to summarize")
    kind, read = reader
    limit = MAX_FILE_BYTES.get(kind, MAX_FILE_BYTES["pdf"])
    if size > limit:
        raise DocumentError(
            path,
            f"{size / 2**20:.0f} MB is more than the {limit >> 20} MB edgekit reads as one {kind} "
            "document; split it",
        )
    meta: dict[str, int] = {}
    try:
        blocks = list(read(path, meta))
    except DocumentError:
        raise
    except OSError as exc:
        raise DocumentError(path, f"cannot be read ({exc.strerror or exc})") from None
    except RecursionError:  # markup nested thousands deep
        raise DocumentError(path, "its structure is nested too deeply to read") from None
    blocks = [b for b in blocks if b.text]
    if not blocks:
        why = {"pdf": "no extractable text (scanned images only? run OCR on it first)"}.get(
            kind, "no text in it: nothing to summarize"
        )
        raise DocumentError(path, why)
    return Document(path, kind, blocks, meta.get("pages"))


# ---- text and Markdown ----------------------------------------------------------------------------
# Files that are something else, whatever their name says: the first bytes tell.
_MAGIC = [(b"%PDF-", "a PDF document"), (b"PK\x03\x04", "a zip archive (DOCX, XLSX, ODT ...)"),
          (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
          (b"\x1f\x8b", "gzip-compressed data"), (b"\xd0\xcf\x11\xe0", "an old Office document (.doc/.xls)"),
          (b"\x7fELF", "a program (ELF)")]
_RENAME = {"a PDF document": ".pdf"}


def decode_text(path: Path, data: bytes) -> str:
    """UTF-8 (with or without BOM) when it is; otherwise the encoding charset-normalizer finds.
    Bytes no encoding explains (NULs, control codes) are a binary file."""
    for magic, what in _MAGIC:
        if data.startswith(magic):
            raise DocumentError(path, f"is {what}, not text" + (
                f" (rename it to {_RENAME[what]})" if what in _RENAME else ""))
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        charset_normalizer = require("charset_normalizer", "charset-normalizer", "docs", "Reading text files")
        best = charset_normalizer.from_bytes(data[: 1 << 20]).best()  # the first MB decides
        if best is None:
            raise DocumentError(
                path, "does not look like text (binary content or an unknown encoding)"
            ) from None
        try:
            text = data.decode(best.encoding)
        except (UnicodeDecodeError, LookupError):
            raise DocumentError(path, f"is not valid {best.encoding} text throughout") from None
    sample = text[:65536]
    controls = sum(1 for c in sample if c < " " and c not in "\t\n\r\f\v")
    if "\x00" in sample or controls > max(8, len(sample) // 100):
        raise DocumentError(path, "does not look like text (binary content: NUL or control bytes)")
    return text


def _paragraphs(text: str) -> Iterator[str]:
    """Blank-line separated paragraphs, hard-wrapped lines joined."""
    for part in re.split(r"\n[ \t]*\n", text.replace("\r\n", "\n").replace("\r", "\n")):
        joined = " ".join(line.strip() for line in part.splitlines() if line.strip())
        if joined:
            yield joined


def _read_text(path: Path, meta: dict[str, int]) -> Iterator[Block]:
    for para in _paragraphs(decode_text(path, path.read_bytes())):
        yield Block(para)


_MD_HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_MD_SETEXT = re.compile(r"^\s{0,3}(=+|-+)\s*$")
_MD_INLINE = [  # each span bounded, so that a line of unclosed markup costs linear time, not quadratic
    (re.compile(r"!\[([^\]\n]{0,500})\]\([^)\n]{0,2000}\)"), r"\1"),  # images: their alt text
    (re.compile(r"\[([^\]\n]{1,500})\]\([^)\n]{0,2000}\)"), r"\1"),  # links: their text
    (re.compile(r"(\*\*|__)(.{1,200}?)\1"), r"\2"),
    (re.compile(r"(?<!\w)[*_](\S.{0,200}?\S|\S)[*_](?!\w)"), r"\1"),
    (re.compile(r"`([^`]{1,2000})`"), r"\1"),
    (re.compile(r"<[^>\n]{1,500}>"), ""),
]


def _md_inline(text: str) -> str:
    for pattern, repl in _MD_INLINE:
        text = pattern.sub(repl, text)
    return text.strip()


def _read_markdown(path: Path, meta: dict[str, int]) -> Iterator[Block]:
    lines = decode_text(path, path.read_bytes()).replace("\r\n", "\n").split("\n")
    para: list[str] = []
    fence = None

    def flush() -> Iterator[Block]:
        if para:
            text = _md_inline(" ".join(para))
            para.clear()
            if text:
                yield Block(text)

    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith(("```", "~~~")):
            yield from flush()
            fence = None if fence and stripped.startswith(fence) else (fence or stripped[:3])
            continue
        if fence:  # code: kept as text, one paragraph per fence
            para.append(stripped)
            continue
        heading = _MD_HEADING.match(line)
        if heading:
            yield from flush()
            yield Block(_md_inline(heading.group(2)), "heading", len(heading.group(1)))
        elif _MD_SETEXT.match(line) and para and i > 0 and lines[i - 1].strip():
            title = para.pop()
            yield from flush()
            yield Block(_md_inline(title), "heading", 1 if stripped.startswith("=") else 2)
        elif not stripped or re.match(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$", line):  # blank or a rule
            yield from flush()
        elif stripped.startswith("|"):  # a table row: its cells as one line of text
            yield from flush()
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c):  # not the |---| rule
                para.append("; ".join(c for c in cells if c))
                yield from flush()
        else:
            item = re.match(r"^\s*(?:[-*+]|\d+[.)])\s+(.*)", line)
            if item:  # each list item is a paragraph of its own
                yield from flush()
                para.append(item.group(1))
            else:
                para.append(stripped.lstrip("> ").strip())
    yield from flush()


# ---- HTML -----------------------------------------------------------------------------------------
_HTML_SKIP = {"script", "style", "noscript", "template", "head", "svg", "nav", "iframe", "object", "form",
              "footer", "aside", "button", "dialog", "menu"}
# a page's furniture, by ARIA role or by the words its id and class use: not the document's text
_HTML_FURNITURE_ROLES = {"navigation", "contentinfo", "complementary", "banner", "dialog", "alertdialog",
                         "search", "menu", "menubar"}
_HTML_FURNITURE = re.compile(r"(?:^|[-_\s])(?:cookies?|consent|gdpr|newsletter|subscribe|breadcrumbs?|"
                             r"sidebar|footer|navbar|menu|advert|ads|promo|social|share)(?:[-_\s]|$)", re.I)


def _furniture(node) -> bool:
    attrs = node.attributes or {}
    if (attrs.get("role") or "").lower() in _HTML_FURNITURE_ROLES:
        return True
    return any(_HTML_FURNITURE.search(attrs.get(a) or "") for a in ("id", "class"))
_HTML_BLOCK = {
    "p",
    "div",
    "li",
    "pre",
    "blockquote",
    "td",
    "th",
    "tr",
    "dt",
    "dd",
    "figcaption",
    "section",
    "article",
    "main",
    "header",
    "footer",
    "aside",
    "ul",
    "ol",
    "dl",
    "table",
    "br",
    "hr",
    "body",
    "caption",
    "address",
    "details",
    "summary",
}


def _read_html(path: Path, meta: dict[str, int]) -> Iterator[Block]:
    lexbor = require("selectolax.lexbor", "selectolax", "docs", "Reading HTML")
    text = decode_text(path, path.read_bytes())
    depth = html_depth(text)
    if depth > MAX_HTML_DEPTH:
        raise DocumentError(path, f"nests its elements {depth} deep (at most {MAX_HTML_DEPTH} are read)")
    tree = lexbor.LexborHTMLParser(text)
    root = tree.body or tree.root
    if root is None:
        return
    buffer: list[str] = []
    out: list[Block] = []

    def flush() -> None:
        text = " ".join(" ".join(buffer).split())
        buffer.clear()
        if text:
            out.append(Block(text))

    def walk(node) -> None:
        child = node.child
        while child is not None:
            tag = child.tag
            if tag == "-text":
                buffer.append(child.text_content or "")
            elif tag in _HTML_SKIP or tag.startswith("-") or _furniture(child):  # scripts, menus, banners
                pass
            elif len(tag) == 2 and tag[0] == "h" and tag[1] in "123456":
                flush()
                text = " ".join(child.text(separator=" ").split())
                if text:
                    out.append(Block(text, "heading", int(tag[1])))
            elif tag in _HTML_BLOCK:
                flush()
                walk(child)
                flush()
            else:  # inline: its text joins the paragraph
                walk(child)
            child = child.next

    walk(root)
    flush()
    yield from out


_HTML_TAG = re.compile(r"<(/?)([a-zA-Z][a-zA-Z0-9-]{0,40})[^<>]{0,2000}?(/?)>|<!--.*?-->", re.S)
# elements that never nest (void) or whose end tag is optional (closed by what follows)
_HTML_FLAT = frozenset("area base br col embed hr img input link meta source track wbr p li dt dd tr td th "
                       "option optgroup thead tbody tfoot colgroup rb rt rp html head body".split())


def html_depth(text: str) -> int:
    """How deep elements nest, counted from the tags in one linear pass (an upper bound: an element
    whose end tag is missing counts as open)."""
    depth = deepest = 0
    for match in _HTML_TAG.finditer(text):
        closing, name, self_closing = match.group(1), match.group(2), match.group(3)
        if name is None or self_closing or name.lower() in _HTML_FLAT:
            continue
        if closing:
            depth = max(0, depth - 1)
        else:
            depth += 1
            deepest = max(deepest, depth)
    return deepest


# ---- PDF ------------------------------------------------------------------------------------------
def _read_pdf(path: Path, meta: dict[str, int]) -> Iterator[Block]:
    pypdf = require("pypdf", "pypdf", "docs", "Reading PDF")
    from pypdf.errors import DependencyError, FileNotDecryptedError, PyPdfError

    try:
        reader = pypdf.PdfReader(path)
        if reader.is_encrypted:
            try:  # many PDFs are "encrypted" with an empty user password only to restrict printing
                opened = reader.decrypt("")
            except (DependencyError, NotImplementedError):
                opened = 0
            if not opened:
                raise DocumentError(
                    path,
                    "the PDF is encrypted with a password; decrypt it first "
                    "(for example: qpdf --decrypt --password=... in.pdf out.pdf)",
                )
        pages = reader.pages
        meta["pages"] = len(pages)
        resolved = getattr(reader, "resolved_objects", None)
        for page in pages:
            text = page.extract_text() or ""
            for para in _paragraphs(_dehyphenate(text)):
                yield Block(para)
            if isinstance(resolved, dict):  # pypdf keeps every object it parsed (each page's decoded
                resolved.clear()  # content): let them go, page by page (half the peak memory)
    except DocumentError:
        raise
    except FileNotDecryptedError:
        raise DocumentError(path, "the PDF is encrypted with a password; decrypt it first") from None
    except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as exc:
        raise DocumentError(path, f"is not a readable PDF ({type(exc).__name__}: {exc})") from None


def _dehyphenate(text: str) -> str:
    """Words a PDF broke across lines ("summar-\\nization") joined again."""
    return re.sub(r"(\w)-\n(\w)", r"\1\2", text)


# ---- DOCX -----------------------------------------------------------------------------------------
# WordprocessingML, read as a stream (expat over the inflating zip member): memory holds the text
# found, not a tree of the document's XML (python-docx's lxml tree takes tens of times the XML)
_W = "http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_OFFICE_DOCUMENT = "/officeDocument"  # the end of the main part's relationship type
_STYLES = "/styles"
_RELS = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_SMALL_PART = 16 * 2**20  # relationships and styles parts are read whole: a few kB in real files


def _read_docx(path: Path, meta: dict[str, int]) -> Iterator[Block]:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            _check_inflated(path, archive)
            broken = archive.testzip()  # CRC of every member: a damaged archive fails here, not later
            if broken is not None:
                raise DocumentError(path, f"is a damaged DOCX (member {broken} fails its checksum)")
            main = _docx_target(path, archive, "_rels/.rels", "", _OFFICE_DOCUMENT)
            if main is None:
                raise DocumentError(path, "is not a valid DOCX (no main document part: not a Word file)")
            folder, name = main.rpartition("/")[::2]
            rels = f"{folder}/_rels/{name}.rels" if folder else f"_rels/{name}.rels"
            styles = _docx_target(path, archive, rels, folder, _STYLES)
            levels = _docx_heading_styles(path, archive, styles) if styles else {}
            with archive.open(main) as stream:
                blocks = _docx_body(path, stream, levels)
    except DocumentError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError, OSError) as exc:
        raise DocumentError(path, f"is not a valid DOCX (a damaged or foreign file: {exc})") from None
    yield from blocks


def _check_inflated(path: Path, archive) -> None:
    """Refuse a zip bomb before anything inflates: the members' sizes as the archive declares them
    (zipfile never reads past a declared size) against an absolute cap and a ratio to the file."""
    inflated = sum(max(0, info.file_size) for info in archive.infolist())
    packed = max(1, path.stat().st_size)
    if inflated > MAX_INFLATED_BYTES or (inflated > 8 * 2**20 and inflated > MAX_INFLATE_RATIO * packed):
        raise DocumentError(
            path, f"inflates from {packed / 2**20:.1f} MB to {inflated / 2**20:.0f} MB (at most "
            f"{MAX_INFLATED_BYTES >> 20} MB, or {MAX_INFLATE_RATIO} times the file, are read): "
            "a compression bomb, or a document too large to summarize")


def _docx_xml(path: Path, archive, member: str):
    """A small part of the package (relationships, styles) as an element tree, DTDs refused."""
    from xml.etree import ElementTree

    info = archive.getinfo(member)
    if info.file_size > _SMALL_PART:
        raise DocumentError(path, f"is not a valid DOCX ({member} is {info.file_size >> 20} MB)")
    data = archive.read(member)
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        raise DocumentError(path, f"is not a valid DOCX ({member} declares a DTD, which Word never writes)")
    try:
        return ElementTree.fromstring(data)
    except ElementTree.ParseError as exc:
        raise DocumentError(path, f"is not a valid DOCX ({member}: {exc})") from None


def _docx_target(path: Path, archive, rels: str, folder: str, kind: str) -> str | None:
    """The member a relationships part points to for a relationship type ending in `kind`."""
    if rels not in archive.NameToInfo:
        return None
    for rel in _docx_xml(path, archive, rels).iter(_RELS):
        if rel.get("Type", "").endswith(kind) and rel.get("TargetMode") != "External":
            target = rel.get("Target", "")
            resolved = target.lstrip("/") if target.startswith("/") else "/".join(
                p for p in f"{folder}/{target}".split("/") if p and p != ".")
            return resolved if resolved in archive.NameToInfo else None
    return None


def _docx_heading_styles(path: Path, archive, member: str) -> dict[str, int]:
    """Paragraph style id -> heading level, for the styles named Title or Heading N."""
    levels = {}
    for style in _docx_xml(path, archive, member).iter(f"{{{_W}style"):
        name = style.find(f"{{{_W}name")
        level = _docx_heading_level(name.get(f"{{{_W}val", "") if name is not None else "")
        if level:
            levels[style.get(f"{{{_W}styleId", "")] = level
    return levels


def _docx_heading_level(style: str) -> int:
    """Title is a heading of level 1, "Heading N" (or Word's stored "heading N") of level N."""
    if style.lower() == "title":
        return 1
    match = re.fullmatch(r"[Hh]eading (\d)", style)
    return int(match.group(1)) if match else 0


def _docx_body(path: Path, stream, levels: dict[str, int]) -> list[Block]:
    """The body's paragraphs (headings by their style) and table rows (cells joined by " | "), in
    order. Text is every w:t of a paragraph (runs, hyperlinks, insertions); tabs and breaks are spaces."""
    from xml.parsers import expat

    blocks: list[Block] = []
    stack: list[str] = []  # local names of the open elements inside w:body ("" for other namespaces)
    in_body = False
    foreign = 0  # open elements of other namespaces: drawings and their text boxes, alternate content
    text: list[str] = []  # the paragraph's (or the table cell's) text so far
    cells: list[str] = []
    style = ""
    keep = False  # inside a w:t

    def refuse(*_args) -> None:
        raise DocumentError(path, "is not a valid DOCX (its XML declares a DTD, which Word never writes)")

    def start(tag: str, attrs: dict[str, str]) -> None:
        nonlocal in_body, style, keep, foreign
        if not tag.startswith(_W):
            if in_body:
                stack.append("")
                foreign += 1
            return
        name = tag[len(_W):]
        if not in_body:
            in_body = name == "body"
            return
        top = stack[0] if stack else name
        stack.append(name)
        if top not in ("p", "tbl") or foreign:
            return
        if name == "t":
            keep = True
        elif name in ("tab", "br", "cr"):
            text.append(" ")
        elif name == "pStyle" and len(stack) == 3 and top == "p":  # w:p/w:pPr/w:pStyle
            style = attrs.get(f"{_W}val", "")

    def end(tag: str) -> None:
        nonlocal in_body, style, keep, foreign
        if not in_body:
            return
        if not stack:  # </w:body>
            in_body = False
            return
        name = stack.pop()
        if not name:
            foreign -= 1
            return
        top = stack[0] if stack else name
        if name == "t":
            keep = False
        elif name == "p":
            if not stack:  # a paragraph of the body
                para = " ".join("".join(text).split())
                level = levels.get(style, 0)
                blocks.append(Block(para, "heading", level) if level else Block(para))
                text.clear()
                style = ""
            else:  # a paragraph in a table cell: the cell's paragraphs are one text
                text.append(" ")
        elif name == "tc" and top == "tbl" and len(stack) == 2:  # w:tbl/w:tr/w:tc
            cells.append(" ".join("".join(text).split()))
            text.clear()
        elif name == "tr" and top == "tbl" and len(stack) == 1:
            blocks.append(Block(" | ".join(dict.fromkeys(c for c in cells if c))))
            cells.clear()
        elif name == "tbl" and not stack:
            text.clear()

    def chars(data: str) -> None:
        if keep:
            text.append(data)

    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartDoctypeDeclHandler = refuse
    parser.EntityDeclHandler = refuse
    parser.StartElementHandler = start
    parser.EndElementHandler = end
    parser.CharacterDataHandler = chars
    parser.buffer_text = True
    try:
        while chunk := stream.read(1 << 16):
            parser.Parse(chunk, False)
        parser.Parse(b"", True)
    except expat.ExpatError as exc:
        raise DocumentError(path, f"is not a valid DOCX (word/document.xml: {exc})") from None
    return blocks


READERS: dict[str, tuple[str, Callable[[Path, dict[str, int]], Iterator[Block]]]] = {
    ".txt": ("text", _read_text),
    ".text": ("text", _read_text),
    ".md": ("markdown", _read_markdown),
    ".markdown": ("markdown", _read_markdown),
    ".html": ("html", _read_html),
    ".htm": ("html", _read_html),
    ".pdf": ("pdf", _read_pdf),
    ".docx": ("docx", _read_docx),
}
SUFFIXES = tuple(READERS)
