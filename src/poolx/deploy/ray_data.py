"""Batch embedding on a Ray cluster through Ray Data: `embed_dataset(ds, export_dir)` adds an embedding column.

The export's files are put once in Ray's object store, so actors on any node get the same bytes (no shared file
system needed) and check them against the manifest's sha256s. Each actor materializes them in a local temporary
directory and holds one `Embedder` for its whole life: the model is loaded once per actor, never per batch. On
CUDA/TensorRT each actor asks Ray for one GPU; on the CPU for `threads` CPUs (and runs that many onnxruntime
threads). Actors that die (a lost node, an OOM kill) are restarted and their batches retried by Ray Data, so no row
is lost or written twice.

`run_file_job` is `poolx embed --engine ray`: Parquet/JSONL/CSV/text in through Ray Data's readers, Parquet or
JSONL out through its writers (a directory of part files), written to a hidden sibling directory and moved into
place only when every block is written.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from functools import partial
from pathlib import Path
from typing import Any, Optional

from poolx.errors import PoolxError, UsageError
from poolx.manifest import Manifest
from poolx.staging import staged_directory

READERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".txt": "text"}
WRITERS = {".parquet": "parquet", ".jsonl": "json"}
GPU_PROVIDERS = ("cuda", "tensorrt")


def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs its extra: pip install 'poolx[ray]'") from None
    return ray


def actor_resources(provider: str, threads: int, actors: int, cluster_cpus: float) -> dict[str, float]:
    """What each embedding actor asks Ray for: one GPU on CUDA/TensorRT, else `threads` CPUs. Ray's CPU counts are
    scheduling tokens: if the actors would hold every CPU, Ray Data's own read and write tasks (1 CPU each) could
    never start and the job would wait forever (seen with 2 actors on 2 CPUs), so the actors then ask for less, to
    leave one CPU free; they still run `threads` onnxruntime threads each."""
    cpus = float(threads) if provider not in GPU_PROVIDERS else 1.0
    if cluster_cpus > 1 and actors * cpus > cluster_cpus - 1:
        cpus = (cluster_cpus - 1) / actors
    return {"num_gpus": 1 if provider in GPU_PROVIDERS else 0, "num_cpus": cpus}


class _EmbedBatches:
    """The Ray Data actor: one Embedder, loaded in the constructor, called on Arrow batches."""

    def __init__(self, bundle: list, provider: str, threads: int, column: str, output_column: str,
                 normalize: bool, batch_size: int) -> None:
        import ray

        from poolx.runtime.embedder import Embedder

        self.directory = Path(tempfile.mkdtemp(prefix="poolx-ray-"))
        for name, data in ray.get(bundle[0]).items():  # bundle: [ObjectRef] (a bare ref would be resolved early)
            path = self.directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        self.embedder = Embedder(self.directory, provider, threads=threads)  # checks every file's sha256
        self.column, self.output_column = column, output_column
        self.normalize, self.batch_size = normalize, batch_size

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = table.column(self.column).to_pylist()
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise UsageError(f"column {self.column!r} holds a {type(texts[bad]).__name__} (not a text) in a row")
        vectors = self.embedder.embed(texts, batch_size=self.batch_size, normalize=self.normalize)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        return table.append_column(self.output_column, column)

    def __del__(self) -> None:
        shutil.rmtree(getattr(self, "directory", ""), ignore_errors=True)


def embed_dataset(
    ds: Any, directory: str | os.PathLike[str], *, column: str = "text", output_column: str = "embedding",
    provider: str = "auto", actors: Optional[int] = None, threads: int = 1, batch_size: int = 1024,
    normalize: bool = False,
) -> Any:
    """`ds` (a Ray Dataset with a string column `column`) with `output_column` added: a fixed_size_list<float32>
    of the export's width per row. Lazy, like every Ray Data transform: it runs when consumed or written.

    provider: auto (CUDA when the cluster has GPUs and the graph is not int8, else CPU), cpu, cuda or tensorrt.
    actors: embedding actors (default: as many as the cluster's GPUs on CUDA/TensorRT, else its CPUs / threads).
    threads: onnxruntime CPU threads per actor (and the CPUs it asks Ray for). batch_size: rows per Ray batch (the
    Embedder sorts them by length and runs them in model batches of 32)."""
    ray = import_ray()
    if provider not in ("auto", "cpu", *GPU_PROVIDERS):
        raise UsageError(f"unknown provider {provider!r}; choose auto, cpu, cuda or tensorrt")
    if threads < 1 or batch_size < 1 or (actors is not None and actors < 1):
        raise UsageError("actors, threads and batch_size must be at least 1")
    manifest = Manifest.read(directory)
    manifest.check_files(Path(directory))
    names = ds.schema().names
    if column not in names:
        raise UsageError(f"the dataset has no column {column!r}; its columns are: {', '.join(names)} (use --column)")
    if output_column in names:
        raise UsageError(f"the dataset already has a column {output_column!r}")
    cluster = ray.cluster_resources()
    cpus = float(cluster.get("CPU", 1))
    if provider == "auto":  # the cluster's GPUs, not this machine's, decide
        gpu_graph = manifest.graph.get("precision", "fp32") != "int8"
        provider = "cuda" if cluster.get("GPU", 0) >= 1 and gpu_graph else "cpu"
    gpus = int(cluster.get("GPU", 0))
    if provider in GPU_PROVIDERS and gpus < (actors or 1):  # Ray would wait forever for GPUs that are not there
        raise UsageError(f"--provider {provider} with {actors or 1} actor(s): the Ray cluster has {gpus} GPU(s)")
    if actors is None:
        actors = gpus if provider in GPU_PROVIDERS else max(1, int(cpus // threads))
    resources = actor_resources(provider, threads, actors, cpus)
    root = Path(directory)
    files = {name: (root / name).read_bytes() for name in [*manifest.files, "manifest.json"]}
    bundle = [ray.put(files)]
    # Blocks go to actors whole: a corpus read as one big block (a Parquet file of one row group) would keep all
    # but one actor idle (measured: 2 actors at 0.48x one process). Split big blocks as they stream by.
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    return ds.map_batches(
        _EmbedBatches, batch_format="pyarrow", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs=dict(
            bundle=bundle, provider=provider, threads=threads, column=column, output_column=output_column,
            normalize=normalize, batch_size=32,
        ),
        **resources,  # Ray Data's actor pools restart dead actors and retry their batches (max_restarts and
        # max_task_retries default to -1 there; tests/test_ray.py kills an actor mid-run to hold it to that)
    )


def connect(address: Optional[str]) -> Any:
    """Join the cluster at `address` ("host:port", "ray://host:port" or "auto"), or start a local one. An address
    nobody answers on is a one-line error within seconds (ray.init alone waits much longer)."""
    ray = import_ray()
    if ray.is_initialized():
        return ray
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--address {address!r} is not host:port, ray://host:port or auto")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as e:
            raise UsageError(f"cannot reach a Ray cluster at {address}: {e.strerror or e}") from None
    # Ray's C++ core logs an error-level line for every actor whose constructor takes an object-store argument and
    # may restart (ours do, and the driver holds the reference for the whole job); set the variable to see them.
    os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
    try:
        if address:
            ray.init(address=address, log_to_driver=False, logging_level="ERROR")
        else:
            # a cluster of this machine alone listens on loopback only
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    except (ConnectionError, RuntimeError, ValueError) as e:
        raise UsageError(f"cannot connect to Ray at {address or 'a new local cluster'}: {str(e).splitlines()[0]}") from None
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray Data logs every plan and sink at INFO
    return ray


def run_file_job(
    directory: Path, input_path: Path, output: Path, *, column: str = "text", id_column: Optional[str] = None,
    provider: str = "auto", address: Optional[str] = None, actors: Optional[int] = None, threads: int = 1,
    normalize: bool = False, force: bool = False,
) -> int:
    """`poolx embed --engine ray`: read `input_path` with Ray Data, embed, write `output` (a directory of Parquet
    or JSONL part files with the `id_column` values as "id", if given, and "embedding"; without ids, rows keep the
    input order). Returns the number of rows written."""
    reader = READERS.get(input_path.suffix.lower())
    writer = WRITERS.get(output.suffix.lower())
    if reader is None:
        raise UsageError(f"--engine ray reads {', '.join(READERS)} inputs, not {input_path.name}")
    if writer is None:
        raise UsageError(f"--engine ray writes .parquet or .jsonl (a directory of part files), not {output.name}")
    if not input_path.exists():
        raise UsageError(f"input {input_path} does not exist")
    if (output.exists() or output.is_symlink()) and not force:
        raise UsageError(f"output {output} exists; pass --force to replace it, or choose another output")
    if not output.parent.is_dir():
        raise UsageError(f"the directory of output {output} ({output.parent}) does not exist; create it first")
    Manifest.read(directory)  # a bad export is an error before a cluster is started
    ray = connect(address)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = id_column is None  # no ids: row i of the output is row i of the input
    read = {"parquet": ray.data.read_parquet, "csv": ray.data.read_csv, "text": ray.data.read_text,
            "json": partial(ray.data.read_json, lines=input_path.suffix.lower() == ".jsonl")}[reader]
    try:
        ds = read(str(input_path))
        names = ds.schema().names
    except Exception as e:  # pyarrow/Ray errors on unreadable input
        raise UsageError(f"cannot read {input_path} with Ray Data: {str(e).strip().splitlines()[-1][:300]}") from None
    if id_column is not None and id_column not in names:
        raise UsageError(f"the input has no column {id_column!r} for --id-column; its columns are: {', '.join(names)}")
    ds = embed_dataset(ds, directory, column=column, provider=provider, actors=actors, threads=threads, normalize=normalize)
    keep = ["embedding"] if id_column is None else [id_column, "embedding"]
    ds = ds.select_columns(keep)
    if id_column is not None and id_column != "id":
        ds = ds.rename_columns({id_column: "id"})
    try:
        with staged_directory(output) as staging:  # renamed to `output` only once every block is written
            (ds.write_parquet if writer == "parquet" else ds.write_json)(str(staging))
            rows = _count_rows(staging, writer)
    except (PoolxError, KeyboardInterrupt):
        raise
    except Exception as e:  # Ray's errors carry the worker's traceback; its last line says what failed
        raise PoolxError(f"the Ray job failed: {str(e).strip().splitlines()[-1][:300]}") from None
    return rows


def _count_rows(directory: Path, writer: str) -> int:
    if writer == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(p).metadata.num_rows for p in directory.glob("*.parquet"))
    return sum(sum(1 for line in p.open("rb") if line.strip()) for p in directory.glob("*.json*"))
