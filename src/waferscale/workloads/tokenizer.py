"""GenSLM's codon tokenizer, written out directly.

GenSLM reads a genome as codons: non-overlapping base triplets from position 0 (frame 0).
Its tokenizer file (``codon_wordlevel_69vocab.json``, a HuggingFace *tokenizers* JSON) is a
plain word-level vocabulary of 5 specials and the 64 codons, so a dictionary lookup does the
same job without the ``tokenizers`` dependency; ``tests/test_genslm_workload.py`` checks
the two agree when the library is installed.

What the shipped JSON says, and how this module follows it:

* ``post_processor`` is ``null``: the tokenizer adds no ``[CLS]``/``[SEP]``. That is the
  default here too; ``add_special_tokens=True`` is an opt-in for experiments. (A
  ``BertProcessing``/``RobertaProcessing``/``TemplateProcessing`` post-processor in
  another vocabulary file would be honoured.)
* ``normalizer`` is ``null`` and the vocabulary is upper case; GenSLM upper-cases genomes
  before tokenizing, and so does :meth:`CodonTokenizer.encode`.
* ``truncation`` and ``padding`` are ``null``: GenSLM sets them per call (pad to
  ``max_length`` = 10,240); :meth:`CodonTokenizer.encode` takes the same two options.
* A codon with any base other than A, C, G, T (an IUPAC ambiguity code such as N, or U)
  has no vocabulary entry and becomes ``[UNK]``, counted in :attr:`Encoding.n_unknown`.

One deliberate difference from upstream GenSLM: upstream splits the genome into triplets
and lets a trailing 1- or 2-base piece fall through to ``[UNK]``. Here the partial codon is
dropped and reported in :attr:`Encoding.dropped_tail`, because an ``[UNK]`` for bases that
were never a codon would claim an unreadable codon that does not exist.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from waferscale.errors import WorkloadError
from waferscale.workloads.fasta import NUCLEOTIDE_CODES, data_path

#: The vocabulary file shipped as package data.
CODON_VOCAB = "codon_wordlevel_69vocab.json"

#: GenSLM's training sequence length in tokens (a ~30,000-base genome is ~10,000 codons).
GENSLM_MAX_LENGTH = 10_240


@dataclass(frozen=True, slots=True)
class Encoding:
    """One tokenized genome.

    ``ids`` and ``attention_mask`` (1 = token, 0 = padding) have the same length.
    ``n_codons`` counts the whole codons the sequence holds, before truncation;
    ``truncated`` how many of them truncation cut; ``n_unknown`` how many kept codon tokens
    are ``[UNK]``; ``dropped_tail`` the 0-2 trailing bases that did not make a codon.
    """

    ids: list[int]
    attention_mask: list[int]
    n_codons: int
    n_unknown: int
    truncated: int
    dropped_tail: str

    def __len__(self) -> int:
        return len(self.ids)


class CodonTokenizer:
    """Word-level codon tokenizer with GenSLM's 69-token vocabulary.

    ``vocab_file`` defaults to the shipped ``codon_wordlevel_69vocab.json``.
    ``model_max_length`` is the truncation/padding length used when ``encode`` gets no
    ``max_length`` (GenSLM's 10,240). ``add_special_tokens`` overrides what the file's
    post-processor says; ``None`` follows the file.
    """

    def __init__(
        self,
        vocab_file: str | os.PathLike[str] | None = None,
        *,
        model_max_length: int = GENSLM_MAX_LENGTH,
        add_special_tokens: bool | None = None,
    ) -> None:
        path = Path(vocab_file) if vocab_file is not None else data_path(CODON_VOCAB)
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise WorkloadError(f"cannot read tokenizer file {path}: {exc}") from None
        model = spec.get("model") or {}
        if model.get("type") != "WordLevel":
            raise WorkloadError(
                f"{path}: tokenizer model is {model.get('type')!r}; only WordLevel is supported"
            )
        self.vocab: dict[str, int] = dict(model["vocab"])
        self.unk_token: str = model.get("unk_token", "[UNK]")
        self._id_to_token = {i: t for t, i in self.vocab.items()}
        self.special_tokens: dict[str, int] = {
            t["content"]: int(t["id"]) for t in spec.get("added_tokens", []) if t.get("special")
        }
        for tok, idx in self.special_tokens.items():
            if self.vocab.get(tok) != idx:
                raise WorkloadError(f"{path}: special token {tok} has id {idx} outside the vocab")
        if model_max_length < 1:
            raise WorkloadError(f"model_max_length must be positive, got {model_max_length}")
        self.model_max_length = model_max_length
        self.post_processor: dict[str, Any] | None = spec.get("post_processor")
        self._prefix, self._suffix = self._template(self.post_processor, path)
        self.add_special_tokens = (
            bool(self._prefix or self._suffix) if add_special_tokens is None else add_special_tokens
        )

    # -- vocabulary -------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def token_id(self, token: str) -> int:
        """Id of a token; unknown tokens map to ``[UNK]`` as in the word-level model."""
        return self.vocab.get(token, self.vocab[self.unk_token])

    @property
    def unk_token_id(self) -> int:
        return self.vocab[self.unk_token]

    @property
    def pad_token_id(self) -> int:
        return self.vocab["[PAD]"]

    @property
    def cls_token_id(self) -> int:
        return self.vocab["[CLS]"]

    @property
    def sep_token_id(self) -> int:
        return self.vocab["[SEP]"]

    @property
    def mask_token_id(self) -> int:
        return self.vocab["[MASK]"]

    def _template(self, pp: dict[str, Any] | None, path: Path) -> tuple[list[str], list[str]]:
        """Special tokens before and after a single sequence, as the post-processor says."""
        if pp is None:
            return [], []
        kind = pp.get("type")
        if kind in ("BertProcessing", "RobertaProcessing"):
            return [pp["cls"][0]], [pp["sep"][0]]
        if kind == "TemplateProcessing":
            prefix: list[str] = []
            suffix: list[str] = []
            seen_seq = False
            for piece in pp.get("single", []):
                if "Sequence" in piece:
                    seen_seq = True
                elif "SpecialToken" in piece:
                    (suffix if seen_seq else prefix).append(piece["SpecialToken"]["id"])
            return prefix, suffix
        raise WorkloadError(f"{path}: post_processor {kind!r} is not supported")

    # -- encoding ---------------------------------------------------------------------

    def codons(self, sequence: str) -> tuple[list[str], str]:
        """Split a sequence into frame-0 codons; returns ``(codons, trailing partial codon)``.

        Upper-cases first. Rejects characters that are not IUPAC nucleotide codes (a
        newline or digit would shift every later codon out of frame).
        """
        seq = sequence.upper()
        if not set(seq) <= NUCLEOTIDE_CODES:
            pos = next(i for i, c in enumerate(seq) if c not in NUCLEOTIDE_CODES)
            raise WorkloadError(
                f"sequence has {sequence[pos]!r} at base {pos + 1}, not a nucleotide code; "
                "read genomes with read_fasta"
            )
        whole = len(seq) - len(seq) % 3
        return [seq[i : i + 3] for i in range(0, whole, 3)], seq[whole:]

    def encode(
        self,
        sequence: str,
        *,
        max_length: int | None = None,
        padding: bool = False,
        truncation: bool = True,
        add_special_tokens: bool | None = None,
    ) -> Encoding:
        """Tokenize one genome.

        ``max_length`` (default ``model_max_length``) counts every token, specials
        included; with ``truncation`` the codons are cut so the specials still fit, and with
        ``padding`` the result is filled with ``[PAD]`` up to ``max_length``. Without
        truncation a longer result raises :class:`WorkloadError` rather than overrunning
        the model's positions.
        """
        limit = self.model_max_length if max_length is None else max_length
        specials = self.add_special_tokens if add_special_tokens is None else add_special_tokens
        prefix, suffix = (self._prefix, self._suffix) if specials else ([], [])
        if specials and not (prefix or suffix):
            # Opt-in on a file without a post-processor: BERT style, with the [CLS] and
            # [SEP] the vocabulary defines.
            prefix, suffix = ["[CLS]"], ["[SEP]"]
        room = limit - len(prefix) - len(suffix)
        if room < 0:
            raise WorkloadError(
                f"max_length {limit} leaves no room for the special tokens {prefix + suffix}"
            )
        codons, tail = self.codons(sequence)
        cut = max(0, len(codons) - room)
        if cut and not truncation:
            raise WorkloadError(
                f"{len(codons)} codons + {len(prefix) + len(suffix)} specials exceed "
                f"max_length {limit}; pass truncation=True or a larger max_length"
            )
        kept = codons[: len(codons) - cut]
        unk = self.unk_token_id
        body = [self.vocab.get(c, unk) for c in kept]
        ids = [self.vocab[t] for t in prefix] + body + [self.vocab[t] for t in suffix]
        mask = [1] * len(ids)
        if padding and len(ids) < limit:
            fill = limit - len(ids)
            ids += [self.pad_token_id] * fill
            mask += [0] * fill
        return Encoding(
            ids=ids,
            attention_mask=mask,
            n_codons=len(codons),
            n_unknown=sum(1 for i in body if i == unk),
            truncated=cut,
            dropped_tail=tail,
        )

    __call__ = encode

    # -- decoding ---------------------------------------------------------------------

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        """Token strings for ids; raises :class:`WorkloadError` for an id outside the vocab."""
        out = []
        for i in ids:
            tok = self._id_to_token.get(int(i))
            if tok is None:
                raise WorkloadError(f"token id {i} is outside the {self.vocab_size}-token vocab")
            out.append(tok)
        return out

    def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = True) -> str:
        """Bases for ids, codons concatenated.

        ``[UNK]`` decodes to ``NNN`` (a codon of unknown bases) so the result stays in
        frame; other specials are skipped, or kept as their bracketed names when
        ``skip_special_tokens`` is false.
        """
        parts = []
        for tok in self.convert_ids_to_tokens(ids):
            if tok == self.unk_token:
                parts.append("NNN")
            elif tok in self.special_tokens:
                if not skip_special_tokens:
                    parts.append(tok)
            else:
                parts.append(tok)
        return "".join(parts)

    def __repr__(self) -> str:
        return (
            f"CodonTokenizer(vocab_size={self.vocab_size}, "
            f"model_max_length={self.model_max_length}, "
            f"add_special_tokens={self.add_special_tokens})"
        )
