"""What a graph is: its variant (precision, fused or not, the device it is built for), described once.

A `Precision` holds everything that depends on the number format alone: the bound verify holds it to against
eager fp32, the devices it can be built for, whether it is always fused, which providers may run it and on which
one it is only slow. A `Variant` is one precision built one way for one target; it says which providers may run
it, which one `auto` picks, and how it is labelled. The manifest stores the variant (`Manifest.variant`); the
exporter, Embedder, verify, bench, serve, Ray and Triton ask it instead of comparing strings. Adding a precision
means one entry in PRECISIONS here (plus its build step in the exporter and its tests).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from poolx.errors import ProviderUnavailableError, UsageError
from poolx.parity.compare import Tolerance
from poolx.providers import CPU, CUDA, OPENVINO, TENSORRT, Provider, get_provider


@dataclass(frozen=True, eq=False)  # one object per precision: compared and hashed by identity
class Precision:
    """name: as typed (`--precision`). tolerance: verify's bound against eager fp32. targets: the devices a graph
    can be built for, the default first (a build for OpenVINO runs there only: `Variant.runs_on`).
    target_tolerance: a bound of its own for the build of one target (by target name). always_fused: the precision
    exists only as a fused graph (fp16). runs_on: the providers that may run it; slow_on: those that run it, but
    slowly (a warning). help: for `--help`."""

    name: str
    tolerance: Tolerance
    targets: tuple[Provider, ...]
    runs_on: tuple[Provider, ...]
    always_fused: bool = False
    slow_on: tuple[Provider, ...] = ()
    help: str = ""
    refusals: dict[str, str] = field(default_factory=dict)  # target name -> why this precision is not built for it
    target_tolerance: dict[str, Tolerance] = field(default_factory=dict)

    def __str__(self) -> str:
        return self.name


# verify's bound for a graph OpenVINO runs in bf16 (issue 13: min cosine per text; torch bf16 measured 0.99998)
BF16_TOLERANCE = Tolerance(atol=None, min_cosine=0.999, max_rel_l2=0.05)
# and for NNCF's static int8 graph OpenVINO runs (issue 13: it is worth building only if it beats bf16 at >= 0.995)
OPENVINO_INT8_TOLERANCE = Tolerance(atol=None, min_cosine=0.995, max_rel_l2=0.1)
_PLAIN_FOR_OPENVINO = "OpenVINO takes the plain fp32 graph (it fuses and picks bf16 or f32 itself); export without --optimize/--target"

FP32 = Precision(
    "fp32", Tolerance(atol=1e-4, rtol=1e-3), targets=(CPU, CUDA), runs_on=(CPU, CUDA, TENSORRT, OPENVINO),
    help="fp32, as traced or fused", refusals={"openvino": _PLAIN_FOR_OPENVINO},
)
FP16 = Precision(
    "fp16", Tolerance(atol=None, min_cosine=0.999, max_rel_l2=0.05), targets=(CUDA,), runs_on=(CPU, CUDA),
    always_fused=True, slow_on=(CPU,),
    help="CUDA: fused, fp16 weights and compute, fp32 inputs/outputs, LayerNorm statistics and pooler",
    refusals={"cpu": "fp16 graphs are for --target cuda (onnxruntime's CPU kernels are fp32); use fp32 or int8 on "
                     "the CPU", "openvino": _PLAIN_FOR_OPENVINO},
)
INT8 = Precision(
    "int8", Tolerance(atol=None, min_cosine=0.99, max_rel_l2=0.15), targets=(CPU, OPENVINO), runs_on=(CPU,),
    help="CPU: dynamic int8 MatMuls, per-channel, SmoothQuant-calibrated (onnxruntime); --target openvino: NNCF's "
         "static int8 graph for OpenVINO (VNNI/AMX-INT8), held to min cosine 0.995",
    refusals={"cuda": "int8 graphs are for --target cpu or openvino (onnxruntime's CUDA provider has no int8 MatMul "
                      "kernels); use fp16 on CUDA"},
    target_tolerance={"openvino": OPENVINO_INT8_TOLERANCE},
)
PRECISIONS: dict[str, Precision] = {p.name: p for p in (FP32, FP16, INT8)}
TARGETS: dict[str, Provider] = {p.name: p for p in (CPU, CUDA, OPENVINO)}


def get_precision(name: str | Precision) -> Precision:
    if isinstance(name, Precision):
        return name
    try:
        return PRECISIONS[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown precision {name!r}; choose one of: {', '.join(PRECISIONS)}") from None


@dataclass(frozen=True)
class Variant:
    """One graph variant: `precision`, `fused` (onnxruntime's transformer fusions applied) and `target` (the
    device it is built for: CPU, CUDA, or OpenVINO for int8). The default, Variant(), is the plain fp32 graph as
    traced."""

    precision: Precision = FP32
    fused: bool = False
    target: Provider = CPU

    # ---- construction ---------------------------------------------------------------------------------------
    @classmethod
    def resolve(
        cls, precision: str | Precision = "fp32", optimize: bool = False, target: str | None = None,
        raw_outputs: Sequence[str] = (),
    ) -> "Variant":
        """The variant `poolx export --precision P [--optimize] [--target T]` asks for, checked before any model
        is loaded: a precision that is always fused implies fusion, the target defaults to the precision's first,
        and a target the precision is not built for is refused with the reason."""
        p = get_precision(precision)
        if target is not None and target not in TARGETS:
            raise UsageError(f"unknown target {target!r}; choose one of: {', '.join(TARGETS)}")
        if target is not None and TARGETS[target] not in p.targets:
            raise UsageError(p.refusals.get(target, f"{p.name} graphs are not built for {target}"))
        if target is not None and p is FP32 and not optimize:
            raise UsageError("--target only changes an --optimize or --precision fp16/int8 export; add --optimize")
        if optimize and target is not None and TARGETS[target] is OPENVINO:  # OpenVINO fuses the graph itself and knows no onnxruntime contrib op
            raise UsageError("--target openvino builds an unfused graph (OpenVINO fuses it itself); drop --optimize")
        variant = cls(p, optimize or p.always_fused, TARGETS[target] if target else p.targets[0])
        variant.check_outputs(raw_outputs)
        return variant

    def check_outputs(self, raw_outputs: Sequence[str]) -> None:
        """Refuse raw backbone outputs this variant's graph cannot have: the fused Attention op has no attention
        probabilities."""
        if self.fuses_attention and "attentions" in raw_outputs:
            raise UsageError(
                "the fused Attention op does not output attention probabilities: drop `attentions` from --outputs, "
                "or export without --optimize/fp16"
            )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Variant":
        """From the manifest: {"precision", "fused", "target"}, or a schema-1 `graph` section that kept them as
        precision / optimized / target (a graph with none of them is the plain fp32 graph)."""
        fused = data.get("fused", data.get("optimized", False))
        precision = get_precision(str(data.get("precision", "fp32")))
        target = str(data.get("target") or precision.targets[0].name)
        if not isinstance(fused, bool) or target not in TARGETS:
            raise ValueError(f"not a graph variant: {data!r}")
        return cls(precision, fused, TARGETS[target])

    def to_json(self) -> dict[str, Any]:
        return {"precision": self.precision.name, "fused": self.fused, "target": self.target.name}

    # ---- what it is -----------------------------------------------------------------------------------------
    @property
    def is_plain(self) -> bool:
        return self == Variant()

    @property
    def fuses_attention(self) -> bool:
        """The build fuses attention into one op (int8 keeps it unfused: its MatMuls quantize better there)."""
        return self.fused and self.precision is not INT8

    @property
    def tolerance(self) -> Tolerance:
        """verify's bound against eager fp32: the precision's, or the one of its build for this target."""
        return self.precision.target_tolerance.get(self.target.name, self.precision.tolerance)

    def tolerance_on(self, provider: Provider) -> Tolerance:
        """verify's bound for this graph run on `provider`: the variant's, or `BF16_TOLERANCE` where OpenVINO
        computes the fp32 graph in bf16 (an int8 graph for OpenVINO keeps its own, looser bound)."""
        return BF16_TOLERANCE if provider.precision == "bf16" and self.precision is FP32 else self.tolerance

    @property
    def label(self) -> str:
        """'fp32', 'fp32 optimized for cpu', 'fp16 optimized for cuda', 'int8 for cpu'."""
        text = self.precision.name + (" optimized" if self.fused else "")
        return text if self.is_plain else f"{text} for {self.target.name}"

    @property
    def short_name(self) -> str:
        """'fp32', 'fp32-optimized', 'fp16', 'int8': the name in bench tables (the device is its own column)."""
        return self.precision.name + ("-optimized" if self.fused and not self.precision.always_fused else "")

    @property
    def name(self) -> str:
        """A file-name-safe name with the target: 'fp32', 'fp32-optimized', 'fp32-optimized-cuda', 'fp16-cuda'."""
        default_target = self.target is CPU and self.precision is FP32
        return self.short_name + ("" if default_target else f"-{self.target.name}")

    # ---- where it runs --------------------------------------------------------------------------------------
    @property
    def runs_on(self) -> tuple[Provider, ...]:
        """The providers that may run this graph. TensorRT and OpenVINO take the plain fp32 graph only: TensorRT
        fuses and builds fp16 engines itself, and onnxruntime's fused contrib ops would split the graph (explicit
        shape profiles then fail on the pieces' inputs); OpenVINO fuses on its own and does not know those ops.
        A graph built for OpenVINO (int8) runs there only: it was calibrated and checked on OpenVINO's kernels."""
        if self.target is OPENVINO:
            return (OPENVINO,)
        return tuple(p for p in self.precision.runs_on if not (p in (TENSORRT, OPENVINO) and self.fused))

    def check_provider(self, provider: str | Provider) -> Provider:
        """`provider` if it may run this graph, else the error that says why not (never a silent run elsewhere)."""
        p = get_provider(provider)
        if p in self.runs_on:
            return p
        if p is TENSORRT:
            raise UsageError(
                "TensorRT takes the plain fp32 export (it fuses and builds fp16 engines itself); export without "
                "--optimize/--precision for it, or use --provider cuda for this graph"
            )
        if p is OPENVINO:
            raise UsageError(
                f"OpenVINO takes the plain fp32 export (it fuses and picks bf16 or f32 itself) or an int8 export for "
                f"it (--precision int8 --target openvino), not this {self.label} graph; use --provider cpu for it"
            )
        if self.target is OPENVINO:
            raise UsageError(
                f"this {self.label} graph (NNCF's static int8) runs on OpenVINO only: use --provider openvino "
                "(pip install 'poolx[openvino]'), or export --precision int8 without --target for onnxruntime"
            )
        where = "the CPU" if self.runs_on == (CPU,) else " or ".join(q.name for q in self.runs_on)
        raise ProviderUnavailableError(
            f"an {self.precision.name} graph runs on {where} only (onnxruntime has no {self.precision.name} MatMul "
            f"kernels for {p.name}); export --precision fp16 for CUDA, or use --provider cpu"
        )

    def slow_on(self, provider: Provider) -> str | None:
        """A warning when `provider` runs this graph only slowly."""
        if provider in self.precision.slow_on:
            return f"this {self.precision.name} graph is built for {self.target.name}; on {provider.name} onnxruntime runs it slowly"
        return None

    def default_provider(self, gpu: bool, openvino: bool = False) -> Provider:
        """What `auto` picks: OpenVINO for a graph built for it; CUDA when a GPU can be used and CUDA runs this graph
        at full speed; else OpenVINO when it is preferred on this CPU (`openvino`: installed and bf16,
        `providers.openvino_preferred`) and runs this graph; else the CPU."""
        if self.target is OPENVINO:
            return OPENVINO
        if gpu and CUDA in self.runs_on and CUDA not in self.precision.slow_on:
            return CUDA
        return OPENVINO if openvino and OPENVINO in self.runs_on else CPU

    def choose(self, provider: str | Provider, gpu: bool | None = None) -> Provider:
        """`provider` checked against this graph, or `auto` resolved (`gpu`: whether CUDA can be used; default:
        whether this onnxruntime has it)."""
        if provider == "auto":
            from poolx.providers import gpu_available, openvino_preferred

            gpu = gpu_available() if gpu is None else gpu
            return self.default_provider(gpu, not gpu and OPENVINO in self.runs_on and openvino_preferred())
        return self.check_provider(provider)


def bench_variants(target: Provider) -> tuple[Variant, ...]:
    """The variants `poolx bench` builds for a device: CPU fp32, fp32 fused and int8; CUDA fp32 fused and fp16;
    OpenVINO the plain graph (it compiles the graph itself and takes no fused graph) and the int8 graph built for
    it."""
    if target is CPU:
        return (Variant(), Variant(FP32, True, CPU), Variant(INT8, False, CPU))
    if target is OPENVINO:
        return (Variant(), Variant(INT8, False, OPENVINO))
    return (Variant(FP32, True, CUDA), Variant(FP16, True, CUDA))
