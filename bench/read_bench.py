"""Reading large documents: time and peak memory of read_document alone, DOCX and PDF, at two sizes
each, so that linear time and bounded memory can be read off the pairs.

    .venv/bin/python bench/read_bench.py [--docx-mb 20 60] [--pdf-corpus-pages 200 1400]

DOCX: Word XML of random sentences from tests/corpus.py (it packs about 4x, as Word's own files do),
written straight into the package. PDF: corpus.write(path, corpus.long_sections(N)) (reportlab; slow
to write; 200 corpus pages make about 140 PDF pages). Each file is read in a fresh process whose
baseline (peak RSS before the read) already has the reader's library imported; the row gives the
growth of the peak (ru_maxrss) during the read.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import corpus  # noqa: E402

MEASURE = """
import json, resource, sys, time, zipfile
from pathlib import Path
import pypdf  # noqa: F401 imported before the baseline, as the reader would import it
from edgekit.summaries.documents import read_document
path = Path(sys.argv[1])
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
start = time.perf_counter()
doc = read_document(path)
seconds = time.perf_counter() - start
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
inflated = (sum(i.file_size for i in zipfile.ZipFile(path).infolist()) if path.suffix == ".docx"
            else path.stat().st_size)
print(json.dumps({"file_mb": path.stat().st_size / 2**20, "inflated_mb": inflated / 2**20,
                  "text_mb": sum(len(b.text) for b in doc.blocks) / 2**20, "blocks": len(doc.blocks),
                  "pages": doc.pages, "seconds": seconds, "peak_growth_mb": peak - base}))
"""
_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_RELS = ('<?xml version="1.0"?><Relationships xmlns="http://schemas.openxmlformats.org/package/2006/'
         'relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/'
         '2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>')


def write_docx(path: Path, xml_mb: float) -> Path:
    rng = random.Random(0)
    words = [w for facts in corpus.TOPICS.values() for fact in facts for w in fact.split()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("_rels/.rels", _RELS)
        with z.open("word/document.xml", "w") as f:
            f.write(f'<?xml version="1.0"?><w:document {_W}><w:body>'.encode())
            written = 0
            while written < xml_mb * 2**20:
                text = " ".join(rng.choice(words) for _ in range(40))
                para = f'<w:p><w:r><w:t xml:space="preserve">{text}</w:t></w:r></w:p>'.encode()
                f.write(para)
                written += len(para)
            f.write(b"</w:body></w:document>")
    return path


def measure(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--docx-mb", type=float, nargs="*", default=[20, 60])
    parser.add_argument("--pdf-corpus-pages", type=int, nargs="*", default=[200, 1400])
    args = parser.parse_args()
    print("| file | read in | peak memory |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for mb in args.docx_mb:
            r = measure(write_docx(Path(tmp) / f"{mb}.docx", mb))
            print(f"| DOCX, {r['inflated_mb']:.0f} MB of XML ({r['file_mb']:.1f} MB file, "
                  f"{r['text_mb']:.0f} MB of text) | {r['seconds']:.1f} s | +{r['peak_growth_mb']:.0f} MB |")
        for pages in args.pdf_corpus_pages:
            path = corpus.write(Path(tmp) / f"{pages}.pdf", corpus.long_sections(pages), "Long")
            r = measure(path)
            print(f"| PDF, {r['pages']} pages ({r['file_mb']:.1f} MB file, {r['text_mb']:.1f} MB of text) "
                  f"| {r['seconds']:.1f} s | +{r['peak_growth_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
