"""manifest.json: what an export directory holds and how it was made. Written by the exporter, read by
`poolx verify` and the runtime. Every file in the directory is listed with its sha256."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poolx.errors import BrokenExportError
from poolx.spec import IOSpec
from poolx.variants import Variant

MANIFEST = "manifest.json"
SCHEMA_VERSION = 2  # 2: the graph's variant is its own section (schema 1 kept precision/optimized/target in graph)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def checksum_tree(root: Path) -> dict[str, str]:
    """sha256 of every file under root, keyed by POSIX path relative to root (the manifest excluded)."""
    return {
        p.relative_to(root).as_posix(): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p != root / MANIFEST
    }


def source_weights(path: Path) -> dict[str, str]:
    """sha256 of the weight files of a model directory and of its direct subdirectories (a sentence-transformers
    directory keeps its Dense weights in 2_Dense/), so verify knows it rebuilds from the same weights."""
    names = sorted(p for pattern in ("*", "*/*") for p in path.glob(pattern)
                   if p.is_file() and p.suffix in (".safetensors", ".bin"))
    return {p.relative_to(path).as_posix(): sha256_file(p) for p in names}


@dataclass
class Manifest:
    source: dict[str, Any]  # name, path, model_type, architecture, width, num_layers, weights sha256
    pooling: dict[str, Any]  # name, options, output_dim, num_labels, dense, normalize
    graph: dict[str, Any]  # file, opset, exporter, external_data (file name or None), fusions, quantization
    io: IOSpec
    tokenizer: dict[str, Any]  # max_length, pad_token, pad_token_id, padding_side[, prompts, default_prompt_name]
    versions: dict[str, str]
    files: dict[str, str] = field(default_factory=dict)
    created: str = ""
    variant: Variant = field(default_factory=Variant)  # precision, fused, target
    schema_version: int = SCHEMA_VERSION

    @property
    def graph_file(self) -> str:
        return str(self.graph["file"])

    @property
    def max_length(self) -> int:
        return int(self.tokenizer["max_length"])

    @property
    def prompts(self) -> dict[str, str]:
        """The sentence-transformers prompts recorded at export (name -> text prepended to each text)."""
        return dict(self.tokenizer.get("prompts") or {})

    def prompt(self, name: str | None = None) -> str:
        """Prompt `name`'s text, or by default the default prompt's ("" when there is none), as
        `SentenceTransformer.encode` applies them. An unknown name is a UsageError naming the prompts there are."""
        from poolx.errors import UsageError

        prompts = self.prompts
        if name is None:
            return prompts.get(self.tokenizer.get("default_prompt_name") or "", "")
        if name not in prompts:
            raise UsageError(f"unknown prompt {name!r}; this export's prompts: {', '.join(prompts) or 'none'}")
        return prompts[name]

    @property
    def normalizes(self) -> bool:
        """Whether the graph L2-normalizes its embedding (a pipeline's Normalize, or --normalize)."""
        return bool(self.pooling.get("normalize", False))

    def to_json(self) -> dict[str, Any]:
        data = {name: getattr(self, name) for name in self.__dataclass_fields__}
        data["io"] = self.io.to_json()
        data["variant"] = self.variant.to_json()
        return data

    def write(self, directory: Path) -> None:
        (directory / MANIFEST).write_text(json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, directory: str | Path) -> "Manifest":
        directory = Path(directory)
        if not directory.is_dir():
            raise BrokenExportError(f"{directory} is not a directory; pass the directory `poolx export` wrote")
        path = directory / MANIFEST
        if not path.is_file():
            raise BrokenExportError(f"{directory} has no {MANIFEST}: it is not a poolx export; run `poolx export`")
        try:
            data = json.loads(path.read_text())
            if int(data.get("schema_version", 0)) > SCHEMA_VERSION:
                raise BrokenExportError(f"{path} was written by a newer poolx; upgrade poolx to read it")
            data["io"] = IOSpec.from_json(data["io"])
            data["variant"] = Variant.from_json(data.get("variant") or data["graph"])  # schema 1: in graph
            data["schema_version"] = SCHEMA_VERSION
            manifest = cls(**data)
            manifest._validate()
        except BrokenExportError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise BrokenExportError(f"{path} is not a valid poolx manifest ({type(e).__name__}: {e}); re-export") from None
        return manifest

    def _validate(self) -> None:
        """Types and cross-references: every file the export reads is listed (and so checksummed)."""
        if not isinstance(self.files, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in self.files.items()
        ):
            raise ValueError("'files' must map file names to sha256 digests")
        for section in (self.source, self.pooling, self.graph, self.tokenizer, self.versions):
            if not isinstance(section, dict):
                raise TypeError("source, pooling, graph, tokenizer and versions must be objects")
        int(self.tokenizer["max_length"]), int(self.tokenizer["pad_token_id"])  # required
        str(self.pooling["name"]), str(self.source["name"])
        width = self.pooling["output_dim"]  # the Embedder's output width: required, a positive integer
        if isinstance(width, bool) or not isinstance(width, int) or width < 1:
            raise ValueError(f"pooling.output_dim must be a positive integer, got {width!r}")
        for ref in (self.graph["file"], self.graph.get("external_data"), self.pooling.get("weights")):
            if ref is not None and ref not in self.files:
                raise ValueError(f"{ref!r} is used by the export but not listed in 'files'")

    def check_files(self, directory: Path) -> None:
        """Every listed file exists and matches its checksum, and no file was added. Raises BrokenExportError."""
        outside = [n for n in self.files if Path(n).is_absolute() or ".." in Path(n).parts]
        if outside:
            raise BrokenExportError(f"{MANIFEST} lists {outside[0]}, outside {directory}; re-export")
        actual = {
            p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file() and p != directory / MANIFEST
        }
        missing = sorted(set(self.files) - actual)
        if missing:
            raise BrokenExportError(f"{directory} lacks {', '.join(missing)} listed in {MANIFEST}; re-export it")
        extra = sorted(actual - set(self.files))
        if extra:
            raise BrokenExportError(
                f"{directory} holds {', '.join(extra)}, which {MANIFEST} does not list; remove it or re-export"
            )
        root = directory.resolve()
        for name, digest in self.files.items():
            if not (directory / name).resolve().is_relative_to(root):  # a symlink out of the export
                raise BrokenExportError(f"{directory / name} links outside {directory}; poolx reads only the export's own files")
            if sha256_file(directory / name) != digest:
                raise BrokenExportError(
                    f"{directory / name} does not match its sha256 in {MANIFEST}: it was edited or corrupted; re-export"
                )
        if self.graph_file in self.files:
            check_external_data(directory / self.graph_file, directory, set(self.files))


def check_external_data(graph: Path, directory: Path, listed: set[str]) -> None:
    """Every external-data `location` in `graph` names a file of the export that the manifest lists: a relative
    path inside `directory`, no `..`, no absolute path, no link out (a crafted graph could otherwise make the
    runtime read, and the embedding return, any file the process can read). Checked before any session opens.
    Raises BrokenExportError."""
    import mmap

    with open(graph, "rb") as f:
        if f.seek(0, 2) == 0:
            return
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data.find(b"location") < 0:  # every external reference carries this key: none here
                return
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    try:
        model = onnx.load(str(graph), load_external_data=False)
    except Exception:  # unreadable: the interface check and the session say so
        return
    root = directory.resolve()
    for tensor in _get_all_tensors(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = {entry.key: entry.value for entry in tensor.external_data}.get("location", "")
        path = Path(location)
        inside = location and not path.is_absolute() and ".." not in path.parts and (directory / path).resolve().is_relative_to(root)
        if not inside or path.as_posix() not in listed:
            raise BrokenExportError(
                f"{graph} points tensor {tensor.name!r} at external data {location!r}, which is not a file of this "
                f"export listed in {MANIFEST}; refusing to load it"
            )
