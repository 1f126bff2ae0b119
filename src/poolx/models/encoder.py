"""PooledEncoder: backbone + pooler + optional Linear head, with a fixed tensor signature, that trains like any
`nn.Module`, saves to a poolx model directory (nothing pickled) and exports to one ONNX graph."""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from poolx.errors import ModelLoadError, UsageError
from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.loading import POOLX_CONFIG, ModelSource, load_backbone, resolve_source
from poolx.models.registry import create_pooler, get_pooler_class, list_poolers

SCHEMA_VERSION = 1
WEIGHTS_FILE = "poolx_model.safetensors"  # pooler + head weights; the backbone keeps its own model.safetensors
RAW_OUTPUTS = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


def has_pooler_head(backbone: nn.Module) -> bool:
    return getattr(backbone, "pooler", None) is not None and not getattr(backbone, "_poolx_pooler_missing", False)


def accepts_token_type_ids(backbone: nn.Module) -> bool:
    """Whether token_type_ids is a graph input: the backbone takes it and has more than one token type
    (RoBERTa has one, DistilBERT none, DeBERTa-v2 usually none)."""
    takes = "token_type_ids" in inspect.signature(backbone.forward).parameters
    return takes and int(getattr(backbone.config, "type_vocab_size", 0) or 0) > 1


class PooledEncoder(nn.Module):
    """`forward(input_ids, attention_mask, token_type_ids=None)` -> {"sentence_embedding": (B, W)[, "logits":
    (B, num_labels)]}.

    Build it from a model name or directory with `PooledEncoder.from_pretrained(...)`, fine-tune it in your own
    loop, `save_pretrained(dir)`, then `poolx export dir`."""

    def __init__(self, backbone: nn.Module, pooler: Pooler, num_labels: int | None = None) -> None:
        super().__init__()
        if pooler.needs_pooler_output and not has_pooler_head(backbone):
            others = ", ".join(n for n in list_poolers() if not get_pooler_class(n).needs_pooler_output)
            why = (
                "its pooler head's weights are missing from the checkpoint (they would be random)"
                if getattr(backbone, "pooler", None) is not None else "has no pooler head"
            )
            raise UsageError(f"pooler 'pooler' cannot be used: this {type(backbone).__name__} {why}; use one of: {others}")
        if num_labels is not None and (isinstance(num_labels, bool) or int(num_labels) < 1):
            raise UsageError(f"num_labels must be a positive integer, got {num_labels!r}")
        self.backbone = backbone
        self.pooler = pooler
        self.num_labels = None if num_labels is None else int(num_labels)
        self.head = nn.Linear(pooler.output_dim, self.num_labels) if self.num_labels else None
        self.uses_token_type_ids = accepts_token_type_ids(backbone)

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls, backbone: nn.Module, pooling: str = "mean", num_labels: int | None = None, seed: int | None = 0,
        **options: Any,
    ) -> "PooledEncoder":
        """Wrap a loaded transformers model. Learned pooler and head parameters are initialised from `seed`
        (None: from torch's global generator) so an export of an untrained pooler is reproducible."""
        config = backbone.config
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            pooler = create_pooler(
                pooling, width=int(config.hidden_size), num_layers=int(config.num_hidden_layers), **options
            )
            return cls(backbone, pooler, num_labels)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike[str] | ModelSource | None = None, pooling: str | None = None,
        num_labels: int | None = None, seed: int | None = 0, **options: Any,
    ) -> "PooledEncoder":
        """Load a poolx model directory (with its trained pooler and head), or a Hugging Face model (local
        directory, hub id in the local cache, or None for the packaged all-MiniLM-L6-v2) plus a new pooler."""
        options = {k: v for k, v in options.items() if v is not None}  # unset CLI flags arrive as None
        source = model if isinstance(model, ModelSource) else resolve_source(model)
        backbone = load_backbone(source)
        if not source.is_poolx:
            return cls.from_backbone(backbone, pooling or "mean", num_labels, seed, **options)
        saved = source.poolx_config()
        name, saved_options = _saved_pooling(saved, source.path)
        if pooling is not None and pooling != name:
            raise UsageError(
                f"{source.path} holds a trained {name!r} pooler; drop --pooling (or pass the backbone directory)"
            )
        if options or num_labels is not None:
            raise UsageError(
                f"{source.path} holds a trained pooler and head; its options come from {POOLX_CONFIG}, "
                "drop the pooler and head options"
            )
        encoder = cls.from_backbone(backbone, name, saved.get("num_labels"), None, **saved_options)
        encoder.load_head_weights(source.path / WEIGHTS_FILE)
        return encoder

    # ---- forward ------------------------------------------------------------------------------------------
    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None,
        raw_outputs: tuple[str, ...] = (),
    ) -> dict[str, torch.Tensor]:
        """The pooled embedding (and logits), plus any of RAW_OUTPUTS; hidden_states and attentions stacked to
        (L+1, B, S, D) and (L, B, heads, S, S)."""
        want_hidden = self.pooler.needs_hidden_states or "hidden_states" in raw_outputs
        kwargs: dict[str, Any] = {}
        if self.uses_token_type_ids and token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids
        out = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=want_hidden,
            output_attentions="attentions" in raw_outputs, return_dict=True, **kwargs,
        )
        features = BackboneFeatures(
            last_hidden_state=out.last_hidden_state,
            attention_mask=attention_mask,
            hidden_states=tuple(out.hidden_states) if want_hidden else None,
            pooler_output=getattr(out, "pooler_output", None) if self.pooler.needs_pooler_output else None,
        )
        embedding = self.pooler(features)
        result = {"sentence_embedding": embedding}
        if self.head is not None:
            result["logits"] = self.head(embedding)
        for name in raw_outputs:
            if name == "hidden_states":
                result[name] = torch.stack(out.hidden_states)
            elif name == "attentions":
                result[name] = torch.stack(out.attentions)
            elif name == "pooler_output":
                result[name] = out.pooler_output
            else:
                result[name] = out.last_hidden_state
        return result

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        return self.encode(input_ids, attention_mask, token_type_ids)

    # ---- description and persistence ----------------------------------------------------------------------
    @property
    def width(self) -> int:
        return int(self.backbone.config.hidden_size)

    @property
    def num_layers(self) -> int:
        return int(self.backbone.config.num_hidden_layers)

    def pooling_config(self) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "pooling": {"name": self.pooler.name, "options": self.pooler.config()},
            "num_labels": self.num_labels,
            "output_dim": self.pooler.output_dim,
        }

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Pooler and head parameters/buffers (everything but the backbone), contiguous, for safetensors."""
        return {
            k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")
        }

    def load_head_weights(self, path: Path) -> None:
        expected = set(self.head_state_dict())
        if not expected:
            return
        if not path.is_file():
            raise ModelLoadError(f"{path} is missing: the trained pooler/head weights are not there; re-save the model")
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for corrupted files
            raise ModelLoadError(f"{path} is not a readable safetensors file ({e}); re-save the model") from None
        if set(state) != expected:
            raise ModelLoadError(
                f"{path} does not match the pooler in {POOLX_CONFIG}: expected {sorted(expected)}, "
                f"found {sorted(state)}"
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise ModelLoadError(f"{path} does not fit the pooler ({str(e).splitlines()[0]})") from None

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Any | None = None) -> Path:
        """Write a poolx model directory: the backbone in Hugging Face layout (config.json, model.safetensors),
        the tokenizer if given, poolx.json (pooler name, options, head), and poolx_model.safetensors."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        save_file(self.head_state_dict(), str(directory / WEIGHTS_FILE))
        (directory / POOLX_CONFIG).write_text(json.dumps(self.pooling_config(), indent=2) + "\n")
        return directory


def _saved_pooling(saved: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]]:
    try:
        if int(saved.get("schema_version", 0)) > SCHEMA_VERSION:
            raise ModelLoadError(f"{path / POOLX_CONFIG} was written by a newer poolx; upgrade poolx")
        pooling = saved["pooling"]
        return str(pooling["name"]), dict(pooling.get("options") or {})
    except (KeyError, TypeError, AttributeError):
        raise ModelLoadError(f"{path / POOLX_CONFIG} has no valid 'pooling' entry; re-save the model") from None
