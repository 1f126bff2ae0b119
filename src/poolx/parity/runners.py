"""The two sides of every parity check: a runner for the ONNX graph on onnxruntime and one for the eager PyTorch
model, both taking the graph's feeds (numpy int64 arrays by input name) and returning numpy outputs by name, and
`compare_runs`, which holds two sequences of runs to a tolerance. verify, the export gate and int8 calibration
all compare through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from poolx.parity.compare import Comparison, Tolerance, new_comparison
from poolx.providers import CPU, Provider
from poolx.spec import BATCH, IOSpec, TensorSpec

Feeds = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


class Runner(Protocol):
    def run(self, feeds: Feeds) -> Outputs: ...


class OnnxRunner:
    """A graph file on one provider (checked: never a silent run elsewhere); `run` returns every output, or
    `names` only."""

    def __init__(self, graph: str | Path, provider: Provider = CPU, threads: int | None = None,
                 names: Sequence[str] | None = None) -> None:
        from poolx.runtime.session import create_session

        self.provider = provider
        self.session = create_session(graph, provider, threads)
        self.names = list(names) if names else [o.name for o in self.session.get_outputs()]

    def run(self, feeds: Feeds) -> Outputs:
        return dict(zip(self.names, self.session.run(self.names, feeds)))


class EagerRunner:
    """A `PooledEncoder` in eval mode with the graph's signature: feeds in the spec's input order, the spec's
    outputs (embedding, logits, raw backbone tensors) out."""

    def __init__(self, encoder: Any, spec: IOSpec) -> None:
        self.encoder = encoder
        self.spec = spec

    def run(self, feeds: Feeds) -> Outputs:
        import torch

        with torch.no_grad():
            out = self.encoder.encode(
                *(torch.from_numpy(feeds[n]) for n in self.spec.input_names), raw_outputs=self.spec.raw_outputs
            )
        return {name: out[name].float().numpy() for name in self.spec.output_names}


def compare_runs(
    got: Iterable[Outputs], ref: Iterable[Outputs], cases: Sequence[str], outputs: Sequence[TensorSpec],
    tolerance: Tolerance,
) -> list[Comparison]:
    """One `Comparison` per output, over matching runs (`cases` names them in the report); rows are found on each
    output's batch axis."""
    comparisons = {t.name: new_comparison(t.name, tolerance) for t in outputs}
    axes = {t.name: list(t.shape).index(BATCH) for t in outputs}
    for case, g, r in zip(cases, got, ref):
        for name, comparison in comparisons.items():
            comparison.add(g[name], r[name], case, axes[name])
    return list(comparisons.values())


def recorded_source(manifest: Any, source: Any = None) -> Any:
    """The model an export came from, as a ModelSource: `source` (a directory, when it moved), else where the
    manifest says, checked against the weights' sha256 recorded at export. Raises BrokenExportError."""
    from poolx.errors import BrokenExportError
    from poolx.manifest import source_weights
    from poolx.models.loading import DEFAULT_MODEL, ModelSource, resolve_source

    if isinstance(source, ModelSource):
        return source
    recorded = manifest.source
    if source is None:
        source = None if recorded["name"] == DEFAULT_MODEL else recorded["path"]
    if source is not None and not Path(source).is_dir():
        raise BrokenExportError(
            f"the model this export came from is not at {source} any more; pass --source DIR to say where it is"
        )
    resolved = resolve_source(source)
    if source_weights(resolved.path) != recorded.get("weights_sha256"):
        raise BrokenExportError(
            f"the weights in {resolved.path} differ from those exported (sha256 mismatch); pass --source with the "
            "model the export came from, or re-export"
        )
    return resolved


def rebuild_encoder(
    manifest: Any, directory: Path, source: Any = None, attn_implementation: str = "eager",
) -> Any:
    """The eager PooledEncoder an export was made from: the source backbone (`recorded_source`) with the
    pooler/head weights stored in the export. `attn_implementation` "sdpa" gives transformers' default (faster)
    attention, for benchmarks."""
    from poolx.models.encoder import PooledEncoder
    from poolx.models.loading import load_backbone

    resolved = recorded_source(manifest, source)
    encoder = PooledEncoder.from_export(manifest.pooling, load_backbone(resolved, attn_implementation), directory)
    return encoder.eval()
