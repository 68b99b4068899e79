"""Workloads: real models and data the engine is measured on.

The headline workload is GenSLM: GPT-NeoX language models reading SARS-CoV-2 genomes as
codon tokens. The genomes, the model configs and the codon vocabulary ship as package data
(``data/``, provenance in ``data/PROVENANCE.md``); see docs/genslm.md.

transformers is needed only to build models; the FASTA reader and tokenizer work without it.
"""

from waferscale.workloads.fasta import (
    EXAMPLE_GENOMES,
    NUCLEOTIDE_CODES,
    Record,
    data_path,
    example_genomes,
    read_fasta,
)
from waferscale.workloads.genslm import (
    IGNORE_INDEX,
    GenomeBatch,
    build_genslm,
    build_gpt2,
    build_model,
    count_parameters,
    genome_batch,
    genslm_config,
    genslm_config_file,
    gpt2_config,
)
from waferscale.workloads.presets import GENSLM_PRESETS, MODEL_NAMES, GenslmPreset
from waferscale.workloads.tokenizer import (
    CODON_VOCAB,
    GENSLM_MAX_LENGTH,
    CodonTokenizer,
    Encoding,
)

__all__ = [
    "CODON_VOCAB", "EXAMPLE_GENOMES", "GENSLM_MAX_LENGTH", "GENSLM_PRESETS", "IGNORE_INDEX",
    "MODEL_NAMES", "NUCLEOTIDE_CODES", "CodonTokenizer", "Encoding", "GenomeBatch",
    "GenslmPreset", "Record", "build_genslm", "build_gpt2", "build_model", "count_parameters",
    "data_path", "example_genomes", "genome_batch", "genslm_config", "genslm_config_file",
    "gpt2_config", "read_fasta",
]
