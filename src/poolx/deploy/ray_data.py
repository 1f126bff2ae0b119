"""Batch embedding on a Ray cluster through Ray Data: `embed_dataset(ds, export_dir)` adds an embedding column.

The export's files are put once in Ray's object store, so actors on any node get the same bytes (no shared file
system needed) and check them against the manifest's sha256s. Each actor materializes them in a local temporary
directory, loads one `Embedder` from it and removes it at once (the session and tokenizer are in memory), so no
exit of an actor or of the driver leaves a copy behind; it holds the Embedder for its whole life: the model is
loaded once per actor, never per batch. On
CUDA/TensorRT each actor asks Ray for one GPU; on the CPU for `threads` CPUs (and runs that many onnxruntime
threads). Actors that die (a lost node, an OOM kill) are restarted and their batches retried by Ray Data, so no row
is lost or written twice.

`run_file_job` is `poolx embed --engine ray`, with the files of `poolx embed` (poolx.corpus): the same inputs, read
by the same streaming reader (with its checks, its errors and its row-for-row contract: a blank .txt line is an
empty text, duplicate ids are refused) in a Ray Data read task on the driver's node, and the same output file,
written on the driver by the same writer as the embedded blocks stream back, and moved into place only when
every row is written.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from poolx.errors import PoolxError, UsageError
from poolx.manifest import Manifest
from poolx.providers import Provider
from poolx.staging import hold, stale



def import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise UsageError("--engine ray needs its extra: pip install 'poolx[ray]'") from None
    return ray


def actor_resources(provider: Provider, threads: int, actors: int, cluster_cpus: float) -> dict[str, float]:
    """What each embedding actor asks Ray for: one GPU on CUDA/TensorRT, else `threads` CPUs. Ray's CPU counts are
    scheduling tokens: if the actors would hold every CPU, Ray Data's own read and write tasks (1 CPU each) could
    never start and the job would wait forever (seen with 2 actors on 2 CPUs), so the actors then ask for less, to
    leave one CPU free; they still run `threads` onnxruntime threads each."""
    cpus = 1.0 if provider.gpu else float(threads)
    if cluster_cpus > 1 and actors * cpus > cluster_cpus - 1:
        cpus = (cluster_cpus - 1) / actors
    return {"num_gpus": 1 if provider.gpu else 0, "num_cpus": cpus}


class _EmbedBatches:
    """The Ray Data actor: one Embedder, loaded in the constructor, called on Arrow batches."""

    def __init__(self, bundle: list, provider: str, threads: int, column: str, output_column: str,
                 normalize: bool, batch_size: int, prompt_name: Optional[str] = None) -> None:
        import ray

        from poolx.runtime.embedder import Embedder

        with _export_files(ray.get(bundle[0])) as directory:  # bundle: [ObjectRef] (a bare ref is resolved early)
            self.embedder = Embedder(directory, provider, threads=threads)  # checks every file's sha256
        self.column, self.output_column = column, output_column
        self.normalize, self.batch_size, self.prompt_name = normalize, batch_size, prompt_name

    def __call__(self, table: Any) -> Any:
        import pyarrow as pa

        texts = table.column(self.column).to_pylist()
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            what = "null" if texts[bad] is None else f"a {type(texts[bad]).__name__}, not a text,"
            raise UsageError(f"column {self.column!r} is {what} in a row; every row needs a text (fill or drop "
                             f"those rows first)")
        vectors = self.embedder.embed(texts, batch_size=self.batch_size, normalize=self.normalize,
                                      prompt_name=self.prompt_name)
        flat = pa.array(vectors.reshape(-1), type=pa.float32())
        column = pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1])
        return table.append_column(self.output_column, column)


ACTOR_DIR_PREFIX = "poolx-ray-"


@contextlib.contextmanager
def _export_files(files: dict[str, bytes]) -> Iterator[Path]:
    """The export's files in a temporary directory of this node (`poolx-ray-PID-XXXX`, locked while it exists),
    for as long as the Embedder loads: onnxruntime, OpenVINO and the tokenizer hold what they need in memory once
    loaded, so the directory is removed then, whatever happens, and an actor that lives for hours, or is killed
    later (its pool shut down, the driver interrupted, the node's Ray stopped), leaves nothing. A directory left
    by an actor killed while loading is removed by the next actor or driver on the node (`sweep_actor_dirs`)."""
    sweep_actor_dirs()
    directory = Path(tempfile.mkdtemp(prefix=f"{ACTOR_DIR_PREFIX}{os.getpid()}-"))
    lock = os.open(directory, os.O_RDONLY)
    try:
        hold(lock)
        for name, data in files.items():
            path = directory / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        os.close(lock)


def sweep_actor_dirs(root: Optional[Path] = None) -> list[Path]:
    """Remove the export copies in this node's temporary directory (or `root`) whose actor is gone: `poolx-ray-PID-*`
    with a free lock and no running process PID (poolx.staging's rule for temporaries)."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    try:
        entries = list(root.glob(f"{ACTOR_DIR_PREFIX}*-*"))
    except OSError:
        return removed
    for path in entries:
        pid = path.name[len(ACTOR_DIR_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and path.is_dir() and not path.is_symlink() and stale(path, int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def embed_dataset(
    ds: Any, directory: str | os.PathLike[str], *, column: str = "text", output_column: str = "embedding",
    provider: str = "auto", actors: Optional[int] = None, threads: int = 1, batch_size: int = 1024,
    normalize: bool = False, prompt_name: Optional[str] = None,
) -> Any:
    """`ds` (a Ray Dataset with a string column `column`) with `output_column` added: a fixed_size_list<float32>
    of the export's width per row. Lazy, like every Ray Data transform: it runs when consumed or written.

    provider: auto (the variant's choice with the cluster's GPUs: CUDA when the cluster has GPUs and CUDA runs the
    graph, else CPU), cpu, cuda or tensorrt (checked against the graph's variant, as the Embedder does).
    actors: embedding actors (default: as many as the cluster's GPUs on CUDA/TensorRT, else its CPUs / threads).
    threads: onnxruntime CPU threads per actor (and the CPUs it asks Ray for). batch_size: rows per Ray batch (the
    Embedder sorts them by length and runs them in model batches of 32). prompt_name: the export's prompt to
    prepend (default: its default prompt, as the Embedder)."""
    ray = import_ray()
    if threads < 1 or batch_size < 1 or (actors is not None and actors < 1):
        raise UsageError("actors, threads and batch_size must be at least 1")
    manifest = Manifest.read(directory)
    manifest.check_files(Path(directory))
    manifest.prompt(prompt_name)  # an unknown prompt is refused before the cluster works
    names = ds.schema().names
    if column not in names:
        raise UsageError(f"the dataset has no column {column!r}; its columns are: {', '.join(names)} (use --column)")
    if output_column in names:
        raise UsageError(f"the dataset already has a column {output_column!r}")
    cluster = ray.cluster_resources()
    cpus = float(cluster.get("CPU", 1))
    gpus = int(cluster.get("GPU", 0))
    chosen = manifest.variant.choose(provider, gpu=gpus >= 1)  # the cluster's GPUs, not this machine's, decide
    if chosen.gpu and gpus < (actors or 1):  # Ray would wait forever for GPUs that are not there
        raise UsageError(f"--provider {chosen} with {actors or 1} actor(s): the Ray cluster has {gpus} GPU(s)")
    if actors is None:
        actors = gpus if chosen.gpu else max(1, int(cpus // threads))
    resources = actor_resources(chosen, threads, actors, cpus)
    root = Path(directory)
    files = {name: (root / name).read_bytes() for name in [*manifest.files, "manifest.json"]}
    bundle = [ray.put(files)]
    # Blocks go to actors whole: a corpus read as one big block (a Parquet file of one row group) would keep all
    # but one actor idle (measured: 2 actors at 0.48x one process). Split big blocks as they stream by.
    ds = ds.repartition(target_num_rows_per_block=batch_size)
    return ds.map_batches(
        _EmbedBatches, batch_format="pyarrow", batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors),
        fn_constructor_kwargs=dict(
            bundle=bundle, provider=chosen.name, threads=threads, column=column, output_column=output_column,
            normalize=normalize, batch_size=32, prompt_name=prompt_name,
        ),
        **resources,  # Ray Data's actor pools restart dead actors and retry their batches (max_restarts and
        # max_task_retries default to -1 there; tests/test_ray.py kills an actor mid-run to hold it to that)
    )


def connect(address: Optional[str]) -> Any:
    """Join the cluster at `address` ("host:port", "ray://host:port" or "auto"), or start a local one. An address
    nobody answers on is a one-line error within seconds (ray.init alone waits much longer)."""
    ray = import_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # Ray Data logs every plan and sink at INFO
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
    return ray


def run_file_job(
    directory: Path, input_path: Path, output: Path, *, column: str = "text", id_column: Optional[str] = None,
    provider: str = "auto", address: Optional[str] = None, actors: Optional[int] = None, threads: int = 1,
    normalize: bool = False, force: bool = False, prompt_name: Optional[str] = None,
) -> int:
    """`poolx embed --engine ray`: `poolx embed`'s input and output files (see poolx.corpus), embedded by Ray Data
    actors. The input is read by poolx.corpus's reader in one read task on the driver's node (row for row: blank
    .txt lines are empty texts; duplicate ids refused); the output is written on the driver by its writer as the
    blocks come back: without ids in input order, with them (`id`) in the order the blocks finish. Returns the
    number of rows written."""
    from poolx.corpus import check_output, open_corpus

    check_output(output, force, input_path=input_path, ids=id_column is not None)
    with open_corpus(input_path, column, id_column) as reader:  # the header and first rows, before a cluster starts
        schema = next(reader.tables()).schema
    width = int(Manifest.read(directory).pooling["output_dim"])  # a bad export is an error before a cluster starts
    ray = connect(address)
    from ray.data import DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = id_column is None  # no ids: row i of the output is row i of the input
    try:
        ds = ray.data.read_datasource(_corpus_datasource(input_path, column, id_column, schema))
        ds = embed_dataset(ds, directory, column="text", provider=provider, actors=actors, threads=threads,
                           normalize=normalize, prompt_name=prompt_name)
        return _write_output(ds, output, width, id_column is not None, force)
    finally:  # what actors on this node killed while loading left (an error, Ctrl-C, SIGTERM: the driver survives)
        sweep_actor_dirs()


def _corpus_datasource(path: Path, column: str, id_column: Optional[str], schema: Any) -> Any:
    """A Ray Data datasource of one read task that streams the corpus through poolx.corpus's reader, on the
    driver's node (which has the file): Arrow blocks of `text` and, with ids, `id` (of the type in `schema`, which
    the driver read from the first rows)."""
    import ray.util.client
    from ray.data import Datasource, ReadTask
    from ray.data.block import BlockMetadata

    id_type = schema.field("id").type if id_column is not None else None
    client = ray.util.client.ray.is_connected()  # ray://: the driver is no node; the file must be on the cluster

    def read() -> Any:
        from poolx.corpus import open_corpus

        with open_corpus(path, column, id_column) as reader:
            yield from reader.tables(id_type)

    class CorpusDatasource(Datasource):
        @property
        def supports_distributed_reads(self) -> bool:
            return client  # else on the driver's node: the file is there (run_file_job opened it)

        def estimate_inmemory_data_size(self) -> Optional[int]:
            return _size(path)

        def get_read_tasks(self, parallelism: int, per_task_row_limit: Optional[int] = None,
                           data_context: Any = None) -> list:
            metadata = BlockMetadata(num_rows=None, size_bytes=_size(path), exec_stats=None, input_files=(str(path),))
            return [ReadTask(read, metadata, schema=schema, per_task_row_limit=per_task_row_limit)]

    return CorpusDatasource()


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size


def _write_output(ds: Any, output: Path, width: int, ids: bool, force: bool) -> int:
    """Stream the embedded blocks to the driver and write them with poolx.corpus's writer, all or nothing."""
    import numpy as np

    from poolx.corpus import EmbeddingWriter

    ds = ds.select_columns(["id", "embedding"] if ids else ["embedding"])
    # A user's error raised in the read task (bad input further in) is one line, not Ray Data's logged traceback.
    consoles = [h for h in logging.getLogger("ray.data").handlers
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    held = _HeldErrors(consoles)
    user_error = False
    try:
        with EmbeddingWriter(output, width, ids=ids, force=force) as writer:
            for block in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                column = block.column("embedding").combine_chunks()
                vectors = np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=np.float32)
                writer.write(vectors.reshape(-1, width), ids=block.column("id").to_pylist() if ids else None)
    except KeyboardInterrupt:
        user_error = True
        raise
    except Exception as e:  # Ray's errors carry the worker's traceback; a poolx error in a task is the user's
        cause = _poolx_error(e)
        if cause is not None:
            user_error = True
            raise cause from None
        raise PoolxError(f"the Ray job failed: {str(e).strip().splitlines()[-1][:300]}") from None
    finally:
        held.release(emit=not user_error)
    return writer.rows_written


class _HeldErrors:
    """Holds back the error records that reach `handlers` until `release`, which emits them, or drops them."""

    def __init__(self, handlers: list[logging.Handler]) -> None:
        self.records: list[tuple[logging.Handler, logging.LogRecord]] = []
        self.filters = [(h, self._holder(h)) for h in handlers]
        for handler, hold in self.filters:
            handler.addFilter(hold)

    def _holder(self, handler: logging.Handler) -> Any:
        def hold(record: logging.LogRecord) -> bool:
            if record.levelno < logging.ERROR:
                return True
            self.records.append((handler, record))
            return False

        return hold

    def release(self, emit: bool) -> None:
        for handler, hold in self.filters:
            handler.removeFilter(hold)
        for handler, record in self.records if emit else ():
            handler.handle(record)
        self.records = []


def _poolx_error(error: BaseException) -> Optional[PoolxError]:
    """The PoolxError in `error`: itself, or what a Ray task raised (a reader's UsageError), which Ray wraps in a
    RayTaskError (whose str is a traceback) and Ray Data in its own exceptions."""
    from ray.exceptions import RayError

    seen: set[int] = set()
    stack: list[Any] = [error]
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, PoolxError) and not isinstance(e, RayError):  # Ray Data appends lines of retry advice
            lines = str(e).strip().splitlines()
            return type(e)(lines[0]) if len(lines) > 1 else e
        stack += [e.__context__, e.__cause__, getattr(e, "cause", None)]  # popped last first: .cause first
    return None
