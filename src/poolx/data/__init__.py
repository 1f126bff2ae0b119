"""Data shipped with poolx: `corpus.txt.gz`, 10,000 real texts (chunks of documentation, 5-300 tokens, median 44;
built by benchmarks/corpus/make_corpus.py), the real-text workload of `poolx bench` and part of the calibration
texts of int8 for OpenVINO."""

from __future__ import annotations


def packaged_corpus() -> list[str]:
    """The 10,000 texts of `corpus.txt.gz`, in order."""
    import gzip
    from importlib.resources import files

    return gzip.decompress(files("poolx").joinpath("data/corpus.txt.gz").read_bytes()).decode().splitlines()
