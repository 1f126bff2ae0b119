"""A sentence-transformers directory's pipeline, read from its files (modules.json and each module's config), so
that an export computes what `SentenceTransformer(dir).encode` computes: Transformer -> Pooling -> Dense ... ->
Normalize, all inside the one graph.

Read without importing sentence-transformers (it is not a dependency). Each step becomes part of poolx's model:
the Pooling step is the `st` pooler with the directory's modes (in sentence-transformers' order), each Dense step a
Linear + activation (+ residual) of the embedding tail (poolx.models.tail), Normalize the tail's L2 normalization.
A module poolx does not know, or a setting it would compute differently, is refused with one line naming it:
never an export that silently drops a step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poolx.errors import ModelLoadError, UsageError
from poolx.models.registry import ST_MODES

MODULES = "modules.json"
ST_CONFIG = "config_sentence_transformers.json"
ST_BERT_CONFIG = "sentence_bert_config.json"

# modules.json names a module by its class path; sentence-transformers 2-5 wrote `sentence_transformers.models.X`,
# 6 writes where the class lives now (`sentence_transformers.base.modules.dense.Dense`, ...). poolx reads the class
# name of either, inside sentence_transformers.
KNOWN = ("Transformer", "Pooling", "Dense", "Normalize")
# Legacy Pooling config keys -> modes (sentence-transformers < 6 wrote one boolean per mode)
LEGACY_MODE_KEYS = {
    "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
# Dense activations poolx rebuilds: torch.nn classes that take no arguments (what sentence-transformers saves)
ACTIVATIONS = ("Identity", "Tanh", "ReLU", "GELU", "Sigmoid", "SiLU", "LeakyReLU", "ELU", "Softsign", "Mish")


@dataclass(frozen=True)
class DenseStep:
    """One Dense module: Linear(in_features, out_features, bias), then the activation (a torch.nn class name),
    plus the input when `residual` (projected by a bias-free Linear when the widths differ). `weights` is its
    weights file in the source directory (None once the weights live in an export's pooler.safetensors)."""

    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "Tanh"
    residual: bool = False
    weights: Path | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias,
                "activation": self.activation, "residual": self.residual}

    @classmethod
    def from_json(cls, data: Any) -> "DenseStep":
        """Read and validate a dense entry of a pooling object; ValueError (UsageError) says what is wrong."""
        if not isinstance(data, dict):
            raise UsageError(f"a dense entry must be an object, got {data!r}")
        try:
            step = cls(int(data["in_features"]), int(data["out_features"]), bool(data.get("bias", True)),
                       str(data.get("activation", "Tanh")), bool(data.get("residual", False)))
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"a dense entry is incomplete or not numeric ({e!r}): {data!r}") from None
        if step.in_features < 1 or step.out_features < 1:
            raise UsageError(f"a dense entry needs positive widths: {data!r}")
        if step.activation not in ACTIVATIONS:
            raise UsageError(f"a dense entry's activation {step.activation!r} is not one of {', '.join(ACTIVATIONS)}")
        return step


@dataclass(frozen=True)
class StPipeline:
    """What a sentence-transformers directory computes after its Transformer, and how its texts are prepared."""

    modes: tuple[str, ...]  # the Pooling module's modes, in sentence-transformers' order
    dense: tuple[DenseStep, ...] = ()
    normalize: bool = False
    prompts: dict[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    max_seq_length: int | None = None
    pooling_width: int | None = None  # the Pooling module's embedding_dimension (the backbone's hidden size)

    def describe(self) -> str:
        """"Transformer -> Pooling(cls+mean) -> Dense(64->16, Tanh) -> Normalize"."""
        return " -> ".join(["Transformer", f"Pooling({'+'.join(self.modes)})", *self.after_pooling()])

    def after_pooling(self) -> list[str]:
        return [f"Dense({d.in_features}->{d.out_features}, {d.activation})" for d in self.dense] + (
            ["Normalize"] if self.normalize else [])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: the sentence-transformers directory is incomplete") from None
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{path} is not valid JSON ({e})") from None


def _class_name(kind: Any) -> str | None:
    if not isinstance(kind, str) or not kind.startswith("sentence_transformers."):
        return None
    return kind.rsplit(".", 1)[-1]


def read_pipeline(directory: Path) -> StPipeline | None:
    """The pipeline of the sentence-transformers directory `directory` (None: it has no modules.json). Raises
    UsageError for a module or setting poolx cannot export as sentence-transformers runs it, ModelLoadError for
    broken files."""
    if not (directory / MODULES).is_file():
        return None
    modules = _read_json(directory / MODULES)
    if not isinstance(modules, list) or not modules or not all(isinstance(m, dict) for m in modules):
        raise ModelLoadError(f"{directory / MODULES} is not a list of modules")
    kinds = [_class_name(m.get("type")) for m in modules]
    for module, kind in zip(modules, kinds):
        if kind not in KNOWN:
            raise UsageError(
                f"{directory} has the sentence-transformers module {module.get('type')!r} ({module.get('path') or 'root'}),"
                f" which poolx cannot export; it exports Transformer -> Pooling -> Dense -> Normalize pipelines"
            )
    if kinds[0] != "Transformer" or kinds.count("Transformer") != 1 or (modules[0].get("path") or "") != "":
        raise UsageError(
            f"{directory}: poolx exports pipelines whose first module is the Transformer at the directory's root; "
            f"this one is {[m.get('path') or m.get('type') for m in modules]}"
        )
    if kinds.count("Pooling") != 1 or kinds[1] != "Pooling":
        raise UsageError(f"{directory}: the pipeline must have one Pooling module right after the Transformer, it has {kinds}")
    if "Normalize" in kinds and kinds.index("Normalize") != len(kinds) - 1:
        raise UsageError(f"{directory}: Normalize must be the pipeline's last module, it is followed by {kinds[kinds.index('Normalize') + 1:]}")
    settings = _read_json(directory / ST_BERT_CONFIG) if (directory / ST_BERT_CONFIG).is_file() else {}
    if settings.get("do_lower_case"):
        raise UsageError(f"{directory}: sentence-transformers lower-cases texts here (do_lower_case); poolx does not export that step")
    modes, width = _pooling(directory / (modules[1].get("path") or ""))
    dense = tuple(_dense(directory / (m.get("path") or "")) for m, k in zip(modules, kinds) if k == "Dense")
    for module, kind in zip(modules, kinds):
        if kind == "Normalize":
            _check_io(directory / (module.get("path") or ""), "Normalize")
    st = _read_json(directory / ST_CONFIG) if (directory / ST_CONFIG).is_file() else {}
    prompts = st.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise ModelLoadError(f"{directory / ST_CONFIG}: prompts must map names to strings, got {prompts!r}")
    default = st.get("default_prompt_name")
    if default is not None and default not in prompts:
        raise ModelLoadError(f"{directory / ST_CONFIG}: default_prompt_name {default!r} is not one of its prompts")
    max_seq = settings.get("max_seq_length")
    return StPipeline(
        tuple(modes), dense, "Normalize" in kinds, dict(prompts), default,
        int(max_seq) if isinstance(max_seq, int) and max_seq > 0 else None, width,
    )


def _pooling(path: Path) -> tuple[list[str], int | None]:
    config = _read_json(path / "config.json")
    if config.get("include_prompt", True) is False:
        raise UsageError(
            f"{path}: this Pooling module leaves the prompt's tokens out (include_prompt false, INSTRUCTOR-style); "
            "poolx prepends prompts as text and pools every token, so it would compute something else"
        )
    if "pooling_mode" in config:
        given = config["pooling_mode"]
        listed = [given] if isinstance(given, str) else list(given or [])
    else:
        listed = [mode for key, mode in LEGACY_MODE_KEYS.items() if config.get(key)]
    unknown = [m for m in listed if m not in ST_MODES]
    if not listed or unknown:
        raise UsageError(f"{path}: pooling modes {listed!r} are not sentence-transformers modes ({', '.join(ST_MODES)})")
    width = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    return listed, int(width) if isinstance(width, int) else None


def _dense(path: Path) -> DenseStep:
    config = _read_json(path / "config.json")
    _check_io(path, "Dense", config)
    activation = str(config.get("activation_function") or "torch.nn.modules.linear.Identity")
    name = activation.rsplit(".", 1)[-1]
    if not activation.startswith("torch.nn.") or name not in ACTIVATIONS:
        raise UsageError(f"{path}: the Dense activation {activation!r} is not one poolx rebuilds ({', '.join(ACTIVATIONS)})")
    weights = next((path / f for f in ("model.safetensors", "pytorch_model.bin") if (path / f).is_file()), None)
    if weights is None:
        raise ModelLoadError(f"{path} has no model.safetensors or pytorch_model.bin: the Dense weights are missing")
    step = DenseStep.from_json({"in_features": config.get("in_features"), "out_features": config.get("out_features"),
                                "bias": config.get("bias", True), "activation": name,
                                "residual": config.get("use_residual", False)})
    return DenseStep(step.in_features, step.out_features, step.bias, step.activation, step.residual, weights)


def _check_io(path: Path, kind: str, config: dict | None = None) -> None:
    """A Dense or Normalize that reads and writes the sentence embedding (not token embeddings)."""
    if config is None:
        config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    for key in ("module_input_name", "module_output_name"):
        value = config.get(key)
        if value not in (None, "sentence_embedding"):
            raise UsageError(f"{path}: this {kind} module works on {value!r}, not the sentence embedding; poolx does not export it")


def load_dense_state(step: DenseStep) -> dict[str, Any]:
    """The Dense module's tensors (`linear.weight`, `linear.bias`, `residual.weight`) from its weights file."""
    import torch

    assert step.weights is not None
    try:
        if step.weights.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(step.weights))
        return torch.load(step.weights, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors / pickle errors of many types
        raise ModelLoadError(f"{step.weights} cannot be read ({type(e).__name__}: {e})") from None
