"""PooledEncoder: backbone + pooler + optional Linear head, with a fixed tensor signature, that trains like any
`nn.Module`, saves to a poolx model directory (nothing pickled) and exports to one ONNX graph."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from poolx.errors import BrokenExportError, ModelLoadError, PoolxError, UsageError
from poolx.models.backbones import BackboneAdapter, adapter_for
from poolx.models.base import BackboneFeatures, Pooler
from poolx.models.head import PoolingConfig, load_state, read_model_head, read_pooling, write_model_head
from poolx.models.loading import POOLX_CONFIG, ModelSource, load_backbone, missing_keys, resolve_source
from poolx.models.registry import create_pooler, get_spec, list_poolers
from poolx.models.st_pipeline import DenseStep, StPipeline, read_pipeline
from poolx.models.tail import EmbeddingTail

RAW_OUTPUTS = ("last_hidden_state", "pooler_output", "hidden_states", "attentions")


def accepts_token_type_ids(backbone: nn.Module) -> bool:
    """Whether token_type_ids is a graph input (the backbone adapter's `uses_token_type_ids`)."""
    return adapter_for(backbone.config).uses_token_type_ids(backbone.config, backbone)


class PooledEncoder(nn.Module):
    """`forward(input_ids, attention_mask, token_type_ids=None)` -> {"sentence_embedding": (B, W)[, "logits":
    (B, num_labels)]}.

    Build it from a model name or directory with `PooledEncoder.from_pretrained(...)`, fine-tune it in your own
    loop, `save_pretrained(dir)`, then `poolx export dir`."""

    def __init__(
        self, backbone: nn.Module, pooler: Pooler, num_labels: int | None = None, tail: EmbeddingTail | None = None,
    ) -> None:
        super().__init__()
        adapter = adapter_for(backbone.config)
        pooler_head = adapter.has_pooler_head(backbone, missing_keys(backbone))
        if pooler.needs_pooler_output and not pooler_head:
            others = ", ".join(n for n in list_poolers() if not get_spec(n).needs_pooler_output)
            why = (
                "its pooler head's weights are missing from the checkpoint (they would be random)"
                if getattr(backbone, "pooler", None) is not None and adapter.pooler_head is not False
                else "has no pooler head"
            )
            raise UsageError(f"pooler 'pooler' cannot be used: this {type(backbone).__name__} {why}; use one of: {others}")
        if pooler.reads_first_token and adapter.is_causal(backbone.config):
            raise UsageError(
                f"pooler {pooler.name!r} reads the first token, which on a causal backbone "
                f"({type(backbone).__name__}) has seen only itself: every text would get the same vector; use "
                "'last' (the last real token, what decoder embedding models pool) or 'mean'"
            )
        if num_labels is not None and (isinstance(num_labels, bool) or int(num_labels) < 1):
            raise UsageError(f"num_labels must be a positive integer, got {num_labels!r}")
        if tail is not None and tail.steps and tail.steps[0].in_features != pooler.output_dim:
            raise UsageError(
                f"the pipeline's Dense step takes {tail.steps[0].in_features} features but the {pooler.name!r} "
                f"pooler gives {pooler.output_dim}; choose a pooler of that width or export without the Dense step"
            )
        self.backbone = backbone
        self.pooler = pooler
        self.tail = tail if tail is not None and (tail.steps or tail.normalize) else None
        self.num_labels = None if num_labels is None else int(num_labels)
        self.head = nn.Linear(self.output_dim, self.num_labels) if self.num_labels else None
        # the sentence-transformers pipeline this encoder reproduces, and whether --pooling replaced its Pooling
        self.st_pipeline: StPipeline | None = None
        self.pooling_replaced = False
        self.adapter: BackboneAdapter = adapter  # the backbone's family (poolx.models.backbones)
        self.has_pooler_head = pooler_head
        self.input_names = adapter.input_names(backbone.config, backbone)
        self.uses_token_type_ids = "token_type_ids" in self.input_names
        self.position_limit = adapter.position_limit(backbone.config, backbone)  # longest sequence it accepts

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls, backbone: nn.Module, pooling: str = "mean", num_labels: int | None = None, seed: int | None = 0,
        dense: tuple[DenseStep, ...] = (), normalize: bool = False, **options: Any,
    ) -> "PooledEncoder":
        """Wrap a loaded transformers model. Learned pooler and head parameters are initialised from `seed`
        (None: from torch's global generator) so an export of an untrained pooler is reproducible. `dense` and
        `normalize` are the embedding tail (poolx.models.tail); Dense steps read from a sentence-transformers
        directory load their weights from it."""
        config = backbone.config
        with torch.random.fork_rng(enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            pooler = create_pooler(
                pooling, width=int(config.hidden_size), num_layers=int(config.num_hidden_layers), **options
            )
            tail = EmbeddingTail(dense, normalize)
            tail.load_source_weights()
            return cls(backbone, pooler, num_labels, tail)

    @classmethod
    def from_pretrained(
        cls, model: str | os.PathLike[str] | ModelSource | None = None, pooling: str | None = None,
        num_labels: int | None = None, seed: int | None = 0, normalize: bool = False, **options: Any,
    ) -> "PooledEncoder":
        """Load a poolx model directory (with its trained pooler and head), or a Hugging Face model (local
        directory, hub id in the local cache, or None for the packaged all-MiniLM-L6-v2) plus a new pooler. A
        sentence-transformers directory brings its pipeline (poolx.models.st_pipeline): its Pooling modes as the
        `st` pooler unless `pooling` replaces them, its Dense steps and Normalize. `normalize` adds L2
        normalization to any model."""
        options = {k: v for k, v in options.items() if v is not None}  # unset CLI flags arrive as None
        source = model if isinstance(model, ModelSource) else resolve_source(model)
        pipeline = None if source.is_poolx else read_pipeline(source.path)  # refusals before the weights load
        backbone = load_backbone(source)
        if pipeline is not None:
            if pooling is None:  # the directory's Pooling step, unless --modes names others
                pooling, options = "st", {"modes": list(pipeline.modes), **options}
            replaced = pooling != "st" or options.get("modes") != list(pipeline.modes)
            encoder = cls.from_backbone(
                backbone, pooling, num_labels, seed, pipeline.dense, pipeline.normalize or normalize, **options,
            )
            encoder.st_pipeline, encoder.pooling_replaced = pipeline, replaced
            return encoder
        if not source.is_poolx:
            return cls.from_backbone(backbone, pooling or "mean", num_labels, seed, normalize=normalize, **options)
        config, weights = read_model_head(source.path)
        if pooling is not None and pooling != config.name:
            raise UsageError(
                f"{source.path} holds a trained {config.name!r} pooler; drop --pooling (or pass the backbone directory)"
            )
        if options or num_labels is not None:
            raise UsageError(
                f"{source.path} holds a trained pooler and head; its options come from {POOLX_CONFIG}, "
                "drop the pooler and head options"
            )
        if normalize and not config.normalize:
            config = PoolingConfig(config.name, config.options, config.num_labels, None, config.dense, True)
        return cls._from_saved_head(backbone, config, weights, ModelLoadError, "re-save the model")

    @classmethod
    def from_export(
        cls, pooling: Mapping[str, Any], backbone: nn.Module, directory: str | os.PathLike[str],
    ) -> "PooledEncoder":
        """The encoder an export holds: `pooling` is its manifest's "pooling" section (any schema), `backbone`
        the source backbone (loaded by the caller, e.g. with `load_backbone`), `directory` the export directory
        holding the weights file it names. Raises BrokenExportError when the section or the weights are broken."""
        config, weights = read_pooling(pooling, "manifest.json", BrokenExportError)
        path = Path(directory) / weights if weights else None
        return cls._from_saved_head(backbone, config, path, BrokenExportError, "re-export")

    @classmethod
    def _from_saved_head(
        cls, backbone: nn.Module, config: PoolingConfig, weights: Path | None, error: type[PoolxError], fix: str,
    ) -> "PooledEncoder":
        try:
            encoder = cls.from_backbone(
                backbone, config.name, config.num_labels, None, config.dense, config.normalize, **config.options,
            )
        except UsageError as e:
            raise error(f"the saved pooler does not fit this backbone: {e}; {fix}") from None
        if config.output_dim is not None and config.output_dim != encoder.output_dim:
            raise error(
                f"the saved {config.name!r} pooler is {config.output_dim} wide but builds {encoder.output_dim} "
                f"wide on this backbone; {fix}"
            )
        encoder.load_head(weights, error, fix)
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
        if self.tail is not None:
            embedding = self.tail(embedding)
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

    @property
    def output_dim(self) -> int:
        """The embedding's width: the pooler's, or the last Dense step's."""
        return self.tail.output_dim(self.pooler.output_dim) if self.tail is not None else self.pooler.output_dim

    @property
    def normalizes(self) -> bool:
        return self.tail is not None and self.tail.normalize

    def pooling_config(self) -> PoolingConfig:
        """The pooler and head's config, as poolx.json and manifest.json's "pooling" record it."""
        tail = self.tail
        return PoolingConfig(
            self.pooler.name, self.pooler.config(), self.num_labels, self.output_dim,
            tail.steps if tail is not None else (), tail is not None and tail.normalize,
        )

    def head_state_dict(self) -> dict[str, torch.Tensor]:
        """Pooler and head parameters/buffers (everything but the backbone), contiguous, for safetensors."""
        return {
            k: v.detach().contiguous().cpu() for k, v in self.state_dict().items() if not k.startswith("backbone.")
        }

    def load_head(self, path: Path | None, error: type[PoolxError] = ModelLoadError, fix: str = "re-save the model") -> None:
        """Load the pooler/head weights from a safetensors file (None: there is none, which is right only for a
        pooler and head without weights). Keys and shapes must match exactly."""
        expected = set(self.head_state_dict())
        if not expected:
            return
        if path is None:
            raise error(f"no pooler/head weights are recorded for this {self.pooler.name!r} pooler; {fix}")
        state = load_state(Path(path), error, fix)
        if set(state) != expected:
            raise error(
                f"{path} does not match the {self.pooler.name!r} pooler: expected {sorted(expected)}, "
                f"found {sorted(state)}; {fix}"
            )
        try:
            self.load_state_dict(state, strict=False)
        except RuntimeError as e:
            raise error(f"{path} does not fit the pooler ({str(e).splitlines()[0]}); {fix}") from None

    def save_pretrained(self, directory: str | os.PathLike[str], tokenizer: Any | None = None) -> Path:
        """Write a poolx model directory: the backbone in Hugging Face layout (config.json, model.safetensors),
        the tokenizer if given, poolx.json (the pooling config) and pooler.safetensors (see poolx.models.head)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(directory)
        write_model_head(directory, self)
        return directory
