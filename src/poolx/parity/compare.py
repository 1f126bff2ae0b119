"""The one comparison of two runs' outputs, used by verify, the export gate, int8 calibration and bench: the
row-wise cosine, the relative L2 error and the elementwise bound, aggregated into a result object per output
(never a warning)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass
class Tolerance:
    """Passes when neither side holds a NaN or inf (an embedding with one is broken even when both sides agree),
    |got - ref| <= atol + rtol·|ref| everywhere (numpy.allclose) unless atol is None, and the row-wise cosine is at
    least min_cosine when that is set. fp32 graphs are held to the elementwise bound (a cosine of a 1-wide output
    near zero is a sign, not a similarity); fp16 and int8 graphs, whose elements legitimately move, to a cosine
    bound against eager fp32 (each precision's bound is in `poolx.variants`)."""

    atol: float | None = 1e-4
    rtol: float = 1e-3
    min_cosine: float | None = None
    max_rel_l2: float | None = None  # ||got - ref|| / ||ref|| over each compared batch: catches scale errors

    def __post_init__(self) -> None:
        from poolx.errors import UsageError

        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if value is None and name == "atol":
                continue
            if not (isinstance(value, (int, float)) and 0 <= value < float("inf")):
                raise UsageError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.min_cosine is not None and not (isinstance(self.min_cosine, (int, float)) and -1 <= self.min_cosine <= 1):
            raise UsageError(f"min_cosine must be between -1 and 1, got {self.min_cosine!r}")
        if self.atol is None and (self.min_cosine is None or self.max_rel_l2 is None):
            raise UsageError("a tolerance needs an elementwise bound (atol), or a cosine and a relative L2 bound")

    def describe(self) -> str:
        """"min cosine 0.999, relative L2 0.05" or "atol 0.0001, rtol 0.001"."""
        parts = [f"atol {self.atol:g}, rtol {self.rtol:g}"] if self.atol is not None else []
        parts += [f"min cosine {self.min_cosine:g}"] if self.min_cosine is not None else []
        parts += [f"relative L2 {self.max_rel_l2:g}"] if self.max_rel_l2 is not None else []
        return ", ".join(parts)

    def override(
        self, atol: float | None = None, rtol: float | None = None, min_cosine: float | None = None,
    ) -> "Tolerance":
        """This bound with any of its numbers replaced (None keeps it): `poolx verify --atol/--rtol/--min-cosine`."""
        return Tolerance(
            atol=atol if atol is not None else self.atol, rtol=rtol if rtol is not None else self.rtol,
            min_cosine=min_cosine if min_cosine is not None else self.min_cosine, max_rel_l2=self.max_rel_l2,
        )


@dataclass
class Comparison:
    """One output, aggregated over every case compared."""

    name: str
    max_abs: float = 0.0
    max_rel: float = 0.0  # max |got-ref| / max(|ref|, 1e-6), elementwise
    min_cosine: float = 1.0  # row-wise (one row per text), over all other axes
    required_atol: float = 0.0  # the smallest atol that passes at this rtol
    nonfinite: int = 0  # elements that are NaN or inf in the graph's output or in eager PyTorch's
    shape_mismatch: bool = False
    elements: int = 0
    cases: int = 0
    atol: float | None = 0.0
    rtol: float = 0.0
    cosine_bound: float | None = None
    rel_l2: float = 0.0  # max over cases of ||got - ref|| / ||ref||
    rel_l2_bound: float | None = None
    worst_case: str = ""  # the case with the largest required_atol

    @property
    def passed(self) -> bool:
        return (
            self.cases > 0 and not self.shape_mismatch and self.nonfinite == 0
            and (self.atol is None or self.required_atol <= self.atol)
            and (self.cosine_bound is None or self.min_cosine >= self.cosine_bound)
            and (self.rel_l2_bound is None or self.rel_l2 <= self.rel_l2_bound)
        )

    def add(self, got: np.ndarray, ref: np.ndarray, case: str, batch_axis: int = 0) -> None:
        self.cases += 1
        if got.shape != ref.shape:
            self.shape_mismatch = True
            self.worst_case = f"{case}: shape {got.shape} != {ref.shape}"
            return
        got = np.asarray(got, dtype=np.float32)
        ref = np.asarray(ref, dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # an infinite difference is a figure, not a warning
            diff = np.subtract(got, ref)
            np.abs(diff, out=diff)
            finite = np.isfinite(got) & np.isfinite(ref) if not np.isfinite(diff).all() else None
            if finite is not None and not finite.all():  # NaN or inf in either array: a failure in itself
                self.nonfinite += int((~finite).sum())
                self.worst_case = f"{case}: NaN or inf"
                got, ref = np.where(finite, got, 0.0).astype(np.float32), np.where(finite, ref, 0.0).astype(np.float32)
                diff = np.abs(got - ref)  # the finite positions' figures
        scale = np.abs(ref)
        # in place: verify compares raw outputs of hundreds of MB (attentions: layers x batch x heads x S x S)
        bound = np.multiply(scale, self.rtol)
        required = float(np.subtract(diff, bound, out=bound).max(initial=0.0))
        del bound
        if (required > self.required_atol or not self.worst_case) and not (self.nonfinite or self.shape_mismatch):
            self.worst_case = case
        self.required_atol = max(self.required_atol, required)
        self.max_abs = max(self.max_abs, float(diff.max(initial=0.0)))
        np.maximum(scale, 1e-6, out=scale)
        self.max_rel = max(self.max_rel, float(np.divide(diff, scale, out=scale).max(initial=0.0)))
        self.min_cosine = min(self.min_cosine, min_cosine(got, ref, batch_axis))
        self.rel_l2 = max(self.rel_l2, _ratio(_norm(diff), _norm(ref)))
        self.elements += got.size

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed}


def new_comparison(name: str, tolerance: Tolerance) -> Comparison:
    return Comparison(
        name, atol=tolerance.atol, rtol=tolerance.rtol, cosine_bound=tolerance.min_cosine,
        rel_l2_bound=tolerance.max_rel_l2,
    )


def row_cosines(got: np.ndarray, ref: np.ndarray, batch_axis: int = 0) -> np.ndarray:
    """The cosine between matching rows (one per text, over all other axes), accumulated in float64; two zero
    rows count as equal."""
    g, r = np.asarray(got), np.asarray(ref)
    every, rows = list(range(g.ndim)), [batch_axis % max(g.ndim, 1)]  # summed over all axes but the batch axis, in
    dot = np.einsum(g, every, r, every, rows, dtype=np.float64)  # place (no copy to bring it to the front)
    gn = np.sqrt(np.einsum(g, every, g, every, rows, dtype=np.float64))
    rn = np.sqrt(np.einsum(r, every, r, every, rows, dtype=np.float64))
    both_zero = (gn == 0) & (rn == 0)
    return np.where(both_zero, 1.0, dot / np.maximum(gn * rn, 1e-300))


def min_cosine(got: np.ndarray, ref: np.ndarray, batch_axis: int = 0) -> float:
    """The smallest row cosine (1.0 for empty arrays)."""
    return float(row_cosines(got, ref, batch_axis).min()) if np.asarray(got).size else 1.0


def _norm(x: np.ndarray) -> float:
    """The L2 norm, squares summed in float64 without a float64 copy of `x`."""
    flat = np.ascontiguousarray(x).reshape(-1)
    return float(np.sqrt(np.einsum("i,i->", flat, flat, dtype=np.float64)))


def _ratio(err_norm: float, ref_norm: float) -> float:
    return err_norm / ref_norm if ref_norm > 0 else (0.0 if err_norm == 0 else float("inf"))
