"""A small, strict FASTA reader for nucleotide genomes.

Strict on purpose: a genome that silently loses a character is read in the wrong codon
frame from that point on, so every character is either a nucleotide code or a typed
:class:`~waferscale.errors.FastaError` that names the record and the position. IUPAC
ambiguity codes (N, R, Y, ...) are kept as they are; the codon tokenizer turns any codon that
contains one into its unknown token.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

from waferscale.errors import FastaError, WorkloadError

#: Every IUPAC nucleotide code (upper case): the four DNA bases, U for RNA, and the
#: ambiguity codes. Lower case (soft-masked) input is accepted and upper-cased.
NUCLEOTIDE_CODES = frozenset("ACGTURYSWKMBDHVN")

#: The five SARS-CoV-2 genomes shipped as package data (see data/PROVENANCE.md).
EXAMPLE_GENOMES = "example_genomes.fasta"

# Whitespace inside a sequence line carries no base, so skipping it cannot shift the frame;
# "\r" covers files written with Windows line endings.
_SKIP = frozenset(" \t\r\f\v")
_ALLOWED = NUCLEOTIDE_CODES | frozenset(c.lower() for c in NUCLEOTIDE_CODES)


@dataclass(frozen=True, slots=True)
class Record:
    """One FASTA record.

    ``id`` is the first word of the header (an accession such as ``NC_045512.2``),
    ``description`` the rest of the header line (may be empty) and ``sequence`` the bases,
    upper-cased, with line breaks removed.
    """

    id: str
    description: str
    sequence: str

    def __len__(self) -> int:
        return len(self.sequence)


def data_path(name: str) -> Path:
    """Path of a file shipped in ``waferscale/workloads/data``.

    Goes through ``importlib.resources`` so it works from a checkout, an editable install
    and a wheel alike; the package is installed unzipped, so a real path exists.
    """
    res = resources.files("waferscale.workloads").joinpath("data", name)
    if not res.is_file():
        raise WorkloadError(f"no packaged data file {name!r} in waferscale/workloads/data")
    return Path(str(res))


def example_genomes() -> list[Record]:
    """The five SARS-CoV-2 genomes shipped with the package (NC_045512.2 and four Delta)."""
    return read_fasta(data_path(EXAMPLE_GENOMES))


def _looks_like_text(source: str) -> bool:
    # A path never starts with ">" nor spans lines; FASTA text always does one of the two.
    return source.lstrip().startswith(">") or "\n" in source


def read_fasta(source: str | os.PathLike[str] | TextIO) -> list[Record]:
    """Parse FASTA from a path, an open text file or the FASTA text itself.

    A ``str`` is taken as FASTA text when it starts with ``>`` or contains a newline, and
    as a path otherwise. Returns the records in file order. Raises :class:`FastaError` for a
    missing file, no records, text before the first header, a header without an id, a
    record without bases, or a character that is not an IUPAC nucleotide code; the message
    names the record, its 1-based base offset and the line and column.
    """
    name: str
    if isinstance(source, str) and _looks_like_text(source):
        text, name = source, "<text>"
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            raise FastaError(
                f"FASTA file not found: {path} (a str without '>' or a newline is read as a path)"
            ) from None
        except UnicodeDecodeError as exc:
            raise FastaError(
                f"{path}: byte {exc.start} is not ASCII; FASTA nucleotide files are plain ASCII"
            ) from None
        name = str(path)
    elif hasattr(source, "read"):
        text, name = source.read(), getattr(source, "name", "<stream>")
    else:
        raise FastaError(f"read_fasta expects a path, a text file or FASTA text, not {source!r}")
    return _parse(text.splitlines(), name)


def _parse(lines: Iterable[str], name: str) -> list[Record]:
    records: list[Record] = []
    header: tuple[str, str, int] | None = None  # (id, description, header line number)
    chunks: list[str] = []
    n_bases = 0

    def finish() -> None:
        if header is None:
            return
        rid, desc, line_no = header
        if n_bases == 0:
            raise FastaError(f"{name}: record {rid!r} (header on line {line_no}) has no bases")
        records.append(Record(rid, desc, "".join(chunks)))

    for line_no, raw in enumerate(lines, start=1):
        if raw.startswith(">"):
            finish()
            words = raw[1:].strip().split(maxsplit=1)
            if not words:
                raise FastaError(f"{name}: line {line_no}: header '>' has no record id")
            header = (words[0], words[1] if len(words) > 1 else "", line_no)
            chunks, n_bases = [], 0
            continue
        if not raw.strip():
            continue  # blank lines separate records in many files, including the shipped one
        if header is None:
            raise FastaError(
                f"{name}: line {line_no}: sequence text before the first '>' header"
            )
        bad = _first_invalid(raw)
        if bad is not None:
            col = bad + 1
            offset = n_bases + sum(1 for c in raw[:bad] if c not in _SKIP) + 1
            raise FastaError(
                f"{name}: record {header[0]!r}: invalid character {raw[bad]!r} at base "
                f"{offset} (line {line_no}, column {col}); allowed are IUPAC nucleotide "
                f"codes {''.join(sorted(NUCLEOTIDE_CODES))}"
            )
        # Upper-case only after validation: every character is ASCII by now, so upper()
        # cannot change the length and the offsets above stay true.
        seq = raw.upper()
        clean = "".join(c for c in seq if c not in _SKIP) if _has_skip(seq) else seq
        chunks.append(clean)
        n_bases += len(clean)
    finish()
    if not records:
        raise FastaError(f"{name}: no FASTA records (no line starts with '>')")
    return records


def _has_skip(seq: str) -> bool:
    return any(c in _SKIP for c in seq)


def _first_invalid(seq: str) -> int | None:
    """Index of the first character that is neither a nucleotide code nor skipped space."""
    # Fast path: a clean line (the common case) is one set difference, no Python loop.
    if set(seq) <= _ALLOWED:
        return None
    for i, c in enumerate(seq):
        if c not in _ALLOWED and c not in _SKIP:
            return i
    return None
