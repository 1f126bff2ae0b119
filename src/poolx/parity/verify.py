"""`verify`: rebuild the eager PyTorch model an export came from and prove the ONNX graph computes the same thing,
on real text, over a grid of batch sizes and lengths (none of them the export example's), with padding, held to
the bound of the graph's variant. `quick_check` is the exporter's gate: the same comparison on two shapes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from poolx.errors import BrokenExportError, ParityError
from poolx.manifest import Manifest
from poolx.parity.compare import Comparison, Tolerance
from poolx.parity.runners import EagerRunner, OnnxRunner, compare_runs, rebuild_encoder, recorded_source
from poolx.parity.texts import VERIFY_TEXTS
from poolx.progress import counted, step
from poolx.providers import CPU, Provider
from poolx.spec import EXPORT_EXAMPLE_SHAPE, IOSpec

BATCH_SIZES = (2, 3, 5, 8, 16)
PAD_CAP = 512  # the longest padding of a batch of several texts (see cap_padding)
SINGLE_CAP = 2048  # the longest padding of one text alone


@dataclass
class Check:
    name: str
    passed: bool
    detail: str


@dataclass
class VerifyReport:
    directory: str
    outputs: list[Comparison]
    checks: list[Check]
    shapes: list[tuple[int, int]]
    seconds: float = 0.0
    provider: str = "cpu"
    variant: str = "fp32"
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks) and all(o.passed for o in self.outputs) and bool(self.outputs)

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": self.directory,
            "passed": self.passed,
            "provider": self.provider,
            "variant": self.variant,
            "notes": self.notes,
            "seconds": round(self.seconds, 3),
            "checks": [c.__dict__ for c in self.checks],
            "outputs": [o.to_json() for o in self.outputs],
            "shapes": [list(s) for s in self.shapes],
        }

    def summary(self) -> str:
        bad = [c.name for c in self.checks if not c.passed] + [o.name for o in self.outputs if not o.passed]
        return "all checks passed" if not bad else f"failed: {', '.join(bad)}"


def cases(texts: Sequence[str], lengths: Sequence[int], max_length: int) -> list[tuple[str, list[int], int | None]]:
    """(label, text indices, pad_to): every text alone (1 token to truncated); batches of several sizes, their
    texts spread over the length range, padded to their longest text; two of them padded further (to an odd length
    and to max_length); and the longest text beside a one-token text (a row of almost all padding). No case has
    the export example's shape."""
    n = len(texts)
    order = sorted(range(n), key=lambda i: lengths[i])
    out: list[tuple[str, list[int], int | None]] = [(f"text {i} alone", [i], None) for i in range(n)]
    for size in BATCH_SIZES:
        size = min(size, n)
        rows = [order[(k * n) // size] for k in range(size)]
        out.append((f"batch of {size}", rows, None))
        if size in (3, 5):
            longest = max(min(lengths[i], max_length) for i in rows)
            out.append((f"batch of {size}, padded to {min(max_length, longest + 13)}", rows, longest + 13))
            out.append((f"batch of {size}, padded to {max_length}", rows, max_length))
    out.append(("longest text beside a one-token text", [order[-1], order[1]], None))
    fixed = []
    for label, rows, pad_to in out:  # never the export example's shape
        pad_to = None if pad_to is None else min(pad_to, max_length)
        length = max(max(min(lengths[i], max_length) for i in rows), pad_to or 0)
        if (len(rows), length) == EXPORT_EXAMPLE_SHAPE:
            pad_to = length + 1
        fixed.append((label, rows, pad_to))
    return fixed


def cap_padding(
    plan: list[tuple[str, list[int], int | None]], lengths: Sequence[int], max_length: int,
    shorten: Callable[[int], int],
) -> tuple[list[tuple[str, list[int], int | None]], str | None]:
    """Keep verify's memory bounded on long-context models (eager attention holds batch x heads x S x S per
    layer): in batches of several texts, a text longer than PAD_CAP tokens is replaced by `shorten(i)` (the index
    of a copy cut to at most PAD_CAP tokens) and padding stops at PAD_CAP; one text alone is padded to at most
    SINGLE_CAP. Returns the plan and a note when the model's max_length is above PAD_CAP."""
    if max_length <= PAD_CAP:
        return plan, None
    out: list[tuple[str, list[int], int | None]] = []
    for label, rows, pad_to in plan:
        if len(rows) > 1:
            rows = [shorten(i) if lengths[i] > PAD_CAP else i for i in rows]
            if pad_to is not None and pad_to > PAD_CAP:
                label, pad_to = label.replace(f"padded to {pad_to}", f"padded to {PAD_CAP}"), PAD_CAP
        elif pad_to is not None and pad_to > SINGLE_CAP:
            label, pad_to = label.replace(f"padded to {pad_to}", f"padded to {SINGLE_CAP}"), SINGLE_CAP
        out.append((label, rows, pad_to))
    longest = min(max_length, SINGLE_CAP)
    out.append((f"one text padded to {longest}", [max(range(len(lengths)), key=lambda i: lengths[i])], longest))
    return out, (
        f"batches of several texts were cut and padded to at most {PAD_CAP} tokens and one text padded to {longest} "
        f"of this model's {max_length} (eager attention's memory grows with the square of the length)"
    )


def check_interface(graph_path: Path, spec: IOSpec) -> Check:
    """The graph's input/output names, element types and dims (fixed sizes and dynamic axis names) match the
    manifest's I/O spec."""
    import onnx

    try:
        model = onnx.load(str(graph_path), load_external_data=False)
    except Exception as e:  # protobuf DecodeError and friends
        raise BrokenExportError(f"{graph_path} is not a readable ONNX file ({type(e).__name__}); re-export") from None
    problems: list[str] = []
    for kind, declared, actual in (("input", spec.inputs, model.graph.input), ("output", spec.outputs, model.graph.output)):
        names = [v.name for v in actual]
        if names != [t.name for t in declared]:
            problems.append(f"{kind}s are {names}, manifest says {[t.name for t in declared]}")
            continue
        for t, v in zip(declared, actual):
            elem = onnx.helper.tensor_dtype_to_np_dtype(v.type.tensor_type.elem_type).name
            dims = tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim)
            if elem != t.dtype:
                problems.append(f"{t.name} is {elem}, manifest says {t.dtype}")
            if dims != tuple(t.shape):
                problems.append(f"{t.name} has dims {list(dims)}, manifest says {list(t.shape)}")
    return Check("interface", not problems, "; ".join(problems) or "names, dtypes and dynamic axes match")


def check_tokenizer(directory: Path, manifest: Manifest, text_encoder: Any, texts: Sequence[str]) -> Check:
    """The runtime's tokenizer (tokenizers + tokenizer.json) gives the ids transformers' tokenizer gives."""
    from transformers import AutoTokenizer

    from poolx.runtime.tokenizer import attend_empty_rows

    try:
        reference = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
    except Exception as e:  # transformers raises OSError/ValueError/... for broken tokenizer files
        raise BrokenExportError(f"the tokenizer files in {directory} cannot be loaded ({type(e).__name__}); re-export") from None
    reference.padding_side = "right"
    got = text_encoder(texts)
    ref = reference(list(texts), padding=True, truncation=True, max_length=manifest.max_length, return_tensors="np")
    ref = attend_empty_rows(dict(ref), int(manifest.tokenizer["pad_token_id"]))  # the runtime's rule for no tokens
    bad = [n for n in got if n in ref and not np.array_equal(got[n], ref[n])]
    detail = "ids match transformers' tokenizer" if not bad else f"{', '.join(bad)} differ from transformers' tokenizer"
    return Check("tokenizer", not bad, detail)


def compare_on(
    graph: OnnxRunner, encoder: Any, spec: IOSpec, text_encoder: Any, texts: Sequence[str],
    plan: Sequence[tuple[str, list[int], int | None]], tolerance: Tolerance,
) -> tuple[list[Comparison], list[tuple[int, int]]]:
    """The graph against the eager encoder on every case of `plan`: the comparisons and the (batch, length)
    shapes compared."""
    eager = EagerRunner(encoder, spec)
    feeds = [text_encoder([texts[i] for i in rows], pad_to=pad_to) for _, rows, pad_to in plan]
    shapes = [tuple(f["input_ids"].shape) for f in feeds]
    cases = [f"{label} {shape}" for (label, _, _), shape in zip(plan, shapes)]
    outputs = compare_runs(
        (graph.run(f) for f in counted(feeds, "comparing with eager PyTorch: case", len(feeds))),
        (eager.run(f) for f in feeds), cases, spec.outputs, tolerance,
    )
    return outputs, shapes


def verify(
    directory: str | Path, *, source: str | None = None, tolerance: Tolerance | None = None, provider: str | None = None,
    texts: Sequence[str] = VERIFY_TEXTS, raise_on_failure: bool = True, atol: float | None = None,
    rtol: float | None = None, min_cosine: float | None = None,
) -> VerifyReport:
    """Verify an export directory on `provider` (default: the graph's target when this onnxruntime can run it, else
    the CPU, said in the report's notes), against `tolerance` (default: the bound of the graph's variant, with any
    of `atol`, `rtol`, `min_cosine` replaced). Raises BrokenExportError when the directory is broken (missing
    files, a checksum mismatch, an unreadable graph) and, unless raise_on_failure is False, ParityError when any
    check or comparison fails; the report is on the error (`err.report`)."""
    from poolx.runtime.tokenizer import TextEncoder

    start = time.perf_counter()
    directory = Path(directory)
    manifest = Manifest.read(directory)
    manifest.check_files(directory)
    checks = [Check("checksums", True, f"{len(manifest.files)} files match manifest.json")]
    graph = directory / manifest.graph_file
    checks.append(check_interface(graph, manifest.io))
    if not checks[-1].passed:  # the numbers cannot be compared by name; fail on the interface alone
        return _finish(VerifyReport(
            str(directory), [], checks, [], time.perf_counter() - start, str(provider or CPU), manifest.variant.label,
        ), raise_on_failure)
    text_encoder = TextEncoder(directory, manifest)
    checks.append(check_tokenizer(directory, manifest, text_encoder, texts))
    chosen, notes = verify_provider(manifest, provider)
    tolerance = tolerance or manifest.variant.tolerance_on(chosen).override(atol, rtol, min_cosine)
    if chosen.precision:
        notes.append(f"{chosen.name} ran the graph in {chosen.precision} on this CPU; held to {tolerance.describe()}")
    resolved = recorded_source(manifest, source)
    step("loading the eager PyTorch model")
    encoder = rebuild_encoder(manifest, directory, resolved)
    texts = list(texts)
    lengths = text_encoder.lengths(texts)
    plan, capped = cap_padding(cases(texts, lengths, manifest.max_length), lengths, manifest.max_length,
                               _shortener(texts, text_encoder))
    if capped:
        notes.append(capped)
    runner = OnnxRunner(graph, chosen)
    outputs, shapes = compare_on(runner, encoder, manifest.io, text_encoder, texts, plan, tolerance)
    from poolx.parity.reference import against_sentence_transformers

    step("comparing with sentence-transformers")
    library, note = against_sentence_transformers(resolved.path, manifest, runner, text_encoder, texts, tolerance)
    outputs += [library] if library is not None else []
    notes += [note] if note else []
    report = VerifyReport(
        str(directory), outputs, checks, shapes, time.perf_counter() - start, chosen.description, manifest.variant.label, notes,
    )
    return _finish(report, raise_on_failure)


def _shortener(texts: list[str], text_encoder: Any) -> Callable[[int], int]:
    """shorten(i): the index in `texts` of a copy of text i cut (at a character) to at most PAD_CAP tokens,
    appended on first use."""
    made: dict[int, int] = {}

    def shorten(i: int) -> int:
        if i not in made:
            lo, hi = 0, len(texts[i])  # the longest prefix within PAD_CAP tokens
            while lo < hi:
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if text_encoder.lengths([texts[i][:mid]])[0] <= PAD_CAP else (lo, mid - 1)
            texts.append(texts[i][:lo])
            made[i] = len(texts) - 1
        return made[i]

    return shorten


def verify_provider(manifest: Manifest, provider: str | None) -> tuple[Provider, list[str]]:
    """The provider to compare on, with the Embedder's refusals (`Variant.check_provider`), and a note when the
    graph's target could not be used: by default the graph's target when this onnxruntime can run it, else the
    CPU."""
    variant = manifest.variant
    if provider is not None:
        return variant.check_provider(provider), []
    target = variant.target
    if target is CPU or target.available() or CPU not in variant.runs_on:  # (a graph for OpenVINO runs there only)
        return target, []
    return CPU, [
        f"this graph targets {target.name.upper()}, which this onnxruntime cannot run here: it was checked on the "
        f"CPU, so its {target.name.upper()} numbers are not verified; run `poolx verify --provider {target.name}` "
        "on a GPU machine"
    ]


def _finish(report: VerifyReport, raise_on_failure: bool) -> VerifyReport:
    if raise_on_failure and not report.passed:
        raise ParityError(f"{report.directory}: {report.summary()}", report)
    return report


def quick_check(directory: Path, encoder: Any, manifest: Manifest) -> None:
    """The exporter's own gate before it writes anything: two shapes, not the export example's."""
    from poolx.runtime.tokenizer import TextEncoder

    texts = [VERIFY_TEXTS[3], VERIFY_TEXTS[1], VERIFY_TEXTS[7]]
    text_encoder = TextEncoder(directory, manifest)
    plan = [("one text", [0], None), ("three texts, padded", [0, 1, 2], min(manifest.max_length, 40))]
    provider = manifest.variant.runs_on[0]  # the CPU, or OpenVINO for a graph built for it
    graph = OnnxRunner(directory / manifest.graph_file, provider)
    outputs, _ = compare_on(graph, encoder, manifest.io, text_encoder, texts, plan, manifest.variant.tolerance_on(provider))
    failed = [o for o in outputs if not o.passed]
    if failed:
        worst = failed[0]
        problem = (
            f"produces NaN or inf in {worst.name} ({worst.worst_case})" if worst.nonfinite
            else f"does not match eager PyTorch on {worst.name} (max abs diff {worst.max_abs:.3g}, min cosine "
            f"{worst.min_cosine:.5f}, at {worst.worst_case})"
        )
        raise ParityError(f"the exported graph {problem}; nothing was written")
