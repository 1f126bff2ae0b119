"""One on-disk layout for the pooler and head, shared by poolx model directories and exports.

Both hold the pooler's config as one JSON object, the *pooling* object,

    {"name": "attention", "options": {"hidden_size": 16, "dropout": 0.1}, "num_labels": 2, "output_dim": 16,
     "dense": [], "normalize": false, "weights": "pooler.safetensors"}

("dense" and "normalize" are the embedding tail, poolx.models.tail: a sentence-transformers pipeline's Dense
steps and Normalize, or `--normalize`; "output_dim" is the width of the embedding after them.)

and its learned weights (state_dict keys `pooler.*` and `head.*`) in `pooler.safetensors` ("weights" is null, and
there is no file, for a pooler and head without parameters or buffers):

- a model directory (`PooledEncoder.save_pretrained`): the backbone in Hugging Face layout, `poolx.json` =
  {"schema_version": 2, "pooling": {...}}, and `pooler.safetensors`;
- an export: `manifest.json`'s "pooling" section is the same object (plus the export's "seed"), beside
  `pooler.safetensors`. The manifest is the one description of an export that every reader (verify, the
  Embedder, serve, Triton) reads and that checksums every file, so the export has no second poolx.json that
  could disagree with it.

Older layouts still load: a model directory of poolx.json schema 1 ({"schema_version": 1, "pooling": {"name",
"options"}, "num_labels", "output_dim"}) with `poolx_model.safetensors`; an export manifest of schema 1, whose
pooling section already had this shape.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from poolx.errors import PoolxError
from poolx.models.loading import POOLX_CONFIG
from poolx.models.st_pipeline import DenseStep

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from poolx.models.encoder import PooledEncoder

HEAD_WEIGHTS = "pooler.safetensors"
MODEL_SCHEMA_VERSION = 2  # 2: poolx.json's "pooling" is the shared pooling object; weights in pooler.safetensors
LEGACY_MODEL_WEIGHTS = "poolx_model.safetensors"  # schema 1 model directories


@dataclass(frozen=True)
class PoolingConfig:
    """A pooler and head as configured: the pooler's registry name, its options (all of them, defaults included,
    as `Pooler.config()` gives them), the head's num_labels (None: no head), the embedding's width, and the
    embedding tail (Dense steps, then L2 normalization) between the pooler and the head."""

    name: str
    options: dict[str, Any] = field(default_factory=dict)
    num_labels: int | None = None
    output_dim: int | None = None
    dense: tuple[DenseStep, ...] = ()
    normalize: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "options": dict(self.options), "num_labels": self.num_labels,
                "output_dim": self.output_dim, "dense": [d.to_json() for d in self.dense], "normalize": self.normalize}

    @classmethod
    def from_json(cls, data: Any) -> "PoolingConfig":
        """Read and validate a pooling object (unknown keys, such as an export's "seed", are ignored). Raises
        ValueError saying what is wrong; the readers below add where."""
        if not isinstance(data, Mapping):
            raise ValueError(f"the pooling entry must be an object, got {type(data).__name__}")
        name = data.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"the pooling entry has no pooler name (got {name!r})")
        options = data.get("options") or {}
        if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
            raise ValueError(f"the options of pooler {name!r} must be an object, got {options!r}")
        dense = data.get("dense") or []
        if not isinstance(dense, list):
            raise ValueError(f"the pooling entry's dense steps must be a list, got {dense!r}")
        normalize = data.get("normalize", False)
        if not isinstance(normalize, bool):
            raise ValueError(f"the pooling entry's normalize must be true or false, got {normalize!r}")
        config = cls(name, dict(options), data.get("num_labels"), data.get("output_dim"),
                     tuple(DenseStep.from_json(d) for d in dense), normalize)
        config.validate()
        return config

    def validate(self, num_layers: int | None = None) -> "PoolingConfig":
        """The pooler is registered and takes these options with valid values (the bounds that depend on the
        backbone only when num_layers is given); num_labels and output_dim are positive integers or None.
        Raises poolx's UsageError (a ValueError)."""
        from poolx.errors import UsageError
        from poolx.models.registry import get_spec

        get_spec(self.name).validate(self.options, num_layers)
        for key in ("num_labels", "output_dim"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{key} must be a positive integer, got {value!r}")
        return self


# ---- the weights file --------------------------------------------------------------------------------------
def save_head(directory: str | Path, encoder: "PooledEncoder") -> dict[str, Any]:
    """Write the encoder's pooler/head weights to DIRECTORY/pooler.safetensors (nothing when it has none) and
    return the pooling object that describes them (what poolx.json and manifest.json's "pooling" hold)."""
    state = encoder.head_state_dict()
    if state:
        from safetensors.torch import save_file

        save_file(state, str(Path(directory) / HEAD_WEIGHTS))
    return {**encoder.pooling_config().to_json(), "weights": HEAD_WEIGHTS if state else None}


def read_pooling(pooling: Any, where: str, error: type[PoolxError]) -> tuple[PoolingConfig, str | None]:
    """A pooling object -> (its PoolingConfig, its weights file name or None), or `error` naming `where`."""
    try:
        config = PoolingConfig.from_json(pooling)
    except ValueError as e:
        raise error(f"{where} has no valid pooling entry: {e}") from None
    weights = pooling.get("weights")
    if weights is not None and (not isinstance(weights, str) or Path(weights).name != weights):
        raise error(f"{where}: the pooling entry's weights must be a file name, got {weights!r}")
    return config, weights


def load_state(path: Path, error: type[PoolxError], fix: str) -> dict[str, "torch.Tensor"]:
    if not path.is_file():
        raise error(f"{path} is missing: the trained pooler/head weights are not there; {fix}")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for corrupted files
        raise error(f"{path} is not a readable safetensors file ({e}); {fix}") from None


# ---- model directories -------------------------------------------------------------------------------------
def write_model_head(directory: str | Path, encoder: "PooledEncoder") -> Path:
    """poolx.json and pooler.safetensors of a model directory; returns poolx.json's path."""
    directory = Path(directory)
    (directory / LEGACY_MODEL_WEIGHTS).unlink(missing_ok=True)  # saving over an old directory: one weights file
    pooling = save_head(directory, encoder)
    if pooling["weights"] is None:
        (directory / HEAD_WEIGHTS).unlink(missing_ok=True)
    path = directory / POOLX_CONFIG
    path.write_text(json.dumps({"schema_version": MODEL_SCHEMA_VERSION, "pooling": pooling}, indent=2) + "\n")
    return path


def read_model_head(directory: str | Path) -> tuple[PoolingConfig, Path | None]:
    """A model directory's pooling config and its weights file (None: the pooler and head have none), from
    poolx.json of schema 2 or of schema 1 (poolx_model.safetensors). Raises ModelLoadError."""
    from poolx.errors import ModelLoadError

    directory = Path(directory)
    path = directory / POOLX_CONFIG
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e}); re-save the model") from None
    if not isinstance(saved, dict):
        raise ModelLoadError(f"{path} is not a poolx model config (not an object); re-save the model")
    try:
        version = int(saved.get("schema_version", 1))
    except (TypeError, ValueError):
        raise ModelLoadError(f"{path} has an invalid schema_version; re-save the model") from None
    if version > MODEL_SCHEMA_VERSION:
        raise ModelLoadError(f"{path} was written by a newer poolx; upgrade poolx")
    pooling = saved.get("pooling")
    if version < 2 and isinstance(pooling, dict):  # schema 1: head fields beside "pooling", weights file fixed
        pooling = {**pooling, "num_labels": saved.get("num_labels"), "output_dim": saved.get("output_dim"),
                   "weights": LEGACY_MODEL_WEIGHTS}
    config, weights = read_pooling(pooling, str(path), ModelLoadError)
    return config, (directory / weights if weights else None)
