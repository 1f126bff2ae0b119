"""The I/O spec: graph input and output names, dtypes and shapes (with named dynamic axes), written once and read
by the exporter, the manifest, `poolx verify` and the runtime. Nothing else lists output names by hand."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence, Union

BATCH = "batch_size"
SEQUENCE = "sequence_length"
EMBEDDING = "sentence_embedding"
LOGITS = "logits"
EXPORT_EXAMPLE_SHAPE = (2, 16)  # (batch, length) of the tracing example; verify never compares on this shape

Dim = Union[int, str]  # a fixed size, or the name of a dynamic axis


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "int64", "float32"
    shape: tuple[Dim, ...]

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "TensorSpec":
        return cls(str(data["name"]), str(data["dtype"]), tuple(data["shape"]))


@dataclass(frozen=True)
class IOSpec:
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @classmethod
    def build(
        cls, *, width: int, num_layers: int, num_heads: int, output_dim: int, num_labels: int | None,
        token_type_ids: bool, raw_outputs: Sequence[str] = (),
    ) -> "IOSpec":
        tokens = (BATCH, SEQUENCE)
        names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type_ids else [])
        inputs = tuple(TensorSpec(n, "int64", tokens) for n in names)
        raw_shapes: dict[str, tuple[Dim, ...]] = {
            "last_hidden_state": (BATCH, SEQUENCE, width),
            "pooler_output": (BATCH, width),
            "hidden_states": (num_layers + 1, BATCH, SEQUENCE, width),
            "attentions": (num_layers, BATCH, num_heads, SEQUENCE, SEQUENCE),
        }
        outputs = [TensorSpec(EMBEDDING, "float32", (BATCH, output_dim))]
        if num_labels:
            outputs.append(TensorSpec(LOGITS, "float32", (BATCH, num_labels)))
        outputs += [TensorSpec(n, "float32", raw_shapes[n]) for n in raw_outputs]
        return cls(inputs, tuple(outputs))

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    @property
    def raw_outputs(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs if t.name not in (EMBEDDING, LOGITS))

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        return {t.name: t.dynamic_axes for t in (*self.inputs, *self.outputs) if t.dynamic_axes}

    def to_json(self) -> dict[str, Any]:
        return {"inputs": [t.to_json() for t in self.inputs], "outputs": [t.to_json() for t in self.outputs]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "IOSpec":
        return cls(
            tuple(TensorSpec.from_json(t) for t in data["inputs"]),
            tuple(TensorSpec.from_json(t) for t in data["outputs"]),
        )
