"""The dynamo exporter: `torch.export` (non-strict) -> `torch.onnx.export(..., dynamo=True, optimize=True)`, the
graph torch ships as its default ONNX exporter, and the one onnxscript's transformer fusions
(`onnxscript.rewriter.ort_fusions`) rewrite for onnxruntime (see poolx.exporter.fuse).

- No silent specialisation: every declared dynamic axis (batch, sequence) is exported as `Dim.AUTO`, so
  torch.export never fails on a module that fixes an axis: it records the fixed size instead, and poolx then refuses
  the graph with one line that names the axis, the size and the module. The module is found while torch.export runs
  the model: forward hooks on every module look, on entry and on exit, at the symbolic sizes of the inputs; the first
  time one of them has become a constant, the module being run then (or just left) is the one that fixed it.
  (`torch.onnx.export` with `dynamic_shapes` would instead fall back, silently, to a graph of fixed shape.) The ONNX
  graph's inputs and outputs are checked too, before any dim is renamed.
- Node names: the dynamo exporter names nodes `node_<op>_<n>`; poolx renames each node after its torch module scope,
  as the TorchScript exporter does (`/pooler/...`, `/head/...`, `/backbone/encoder/layer/0/...`), from the
  `pkg.torch.onnx.name_scopes` metadata each node carries (onnxscript's fusions keep it on the fused nodes), so the
  fp16 and int8 steps keep the pooler and head float32 by name on both exporters.
"""

from __future__ import annotations

import ast
import contextlib
import warnings
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from poolx.errors import ExportError, PoolxError, UsageError, first_line
from poolx.spec import IOSpec

OPSETS = range(18, 21)  # what torch's dynamo exporter writes (it builds opset 18 graphs; 17 needs a down-conversion)
DEFAULT_OPSET = 18
NAME_SCOPES = "pkg.torch.onnx.name_scopes"
ROOT_SCOPE = "encoder."  # GraphModule's attribute holding the PooledEncoder: not part of the node names


MIN_TORCH = (2, 6)  # torch.export's Dim.AUTO, and torch.onnx.export(ExportedProgram, dynamo=True, optimize=...)


def check_torch() -> None:
    version = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2] if p.isdigit())
    if version < MIN_TORCH:
        raise UsageError(
            f"the dynamo exporter needs torch {'.'.join(map(str, MIN_TORCH))} or later (this is {torch.__version__}); "
            "upgrade torch or use --exporter torchscript"
        )


def check_opset(opset: int) -> None:
    if opset not in OPSETS:
        raise UsageError(
            f"opset {opset} is not written by the dynamo exporter; use {OPSETS.start}..{OPSETS.stop - 1} with "
            f"--exporter dynamo (default {DEFAULT_OPSET}), or --exporter torchscript for opsets below {OPSETS.start}"
        )


def export_dynamo(module: nn.Module, args: tuple[torch.Tensor, ...], spec: IOSpec, opset: int, what: str) -> Any:
    """`module` (poolx.exporter.trace.GraphModule) exported with torch's dynamo exporter; returns the onnx
    ModelProto with torch's own dim names, every declared dynamic axis checked symbolic, nodes named by scope.
    `what` names the export in errors ("pooler 'mean'")."""
    check_opset(opset)
    check_torch()
    dynamic = {t.name: dict.fromkeys(t.dynamic_axes, torch.export.Dim.AUTO) for t in spec.inputs}
    watcher = _SpecialisationWatcher(module, spec)
    try:
        with _quiet(), torch.no_grad(), watcher.watching():
            program = torch.export.export(module, args, dynamic_shapes=dynamic, strict=False)
        watcher.check_program(program)
        with _quiet(), torch.no_grad():
            onnx_program = torch.onnx.export(
                program, args, dynamo=True, optimize=True, opset_version=opset, external_data=False,
                input_names=spec.input_names, output_names=spec.output_names, verbose=False, report=False,
            )
        model = onnx_program.model_proto
    except PoolxError:
        raise
    except Exception as e:  # torch.export and the exporter raise many types; the first line says what failed
        raise ExportError(f"the dynamo exporter failed for {what}: {first_line(e)[:300]}") from None
    check_symbolic(model, spec, watcher.culprit)
    name_nodes_by_scope(model)
    return model


def check_symbolic(model: Any, spec: IOSpec, culprit: str | None = None) -> None:
    """Every declared dynamic axis of the graph's inputs and outputs is a symbol (dim_param), not a size: else
    ExportError naming the axis, the tensor, the size and (when known) the module that fixed it."""
    for declared, values in ((spec.inputs, model.graph.input), (spec.outputs, model.graph.output)):
        by_name = {v.name: v for v in values}
        for tensor in declared:
            value = by_name.get(tensor.name)
            if value is None:
                raise ExportError(f"the dynamo exporter's graph has no {tensor.name!r}")
            dims = value.type.tensor_type.shape.dim
            for axis, name in tensor.dynamic_axes.items():
                if axis < len(dims) and not dims[axis].dim_param:
                    where = f" in {culprit}" if culprit else ""
                    size = dims[axis].dim_value if dims[axis].HasField("dim_value") else "a constant"
                    raise ExportError(
                        f"the dynamo exporter fixed axis {axis} ({name}) of {tensor.name} to {size}{where}: the graph "
                        f"would take no other {name}; export with --exporter torchscript"
                    )


def scope_of(node: Any) -> list[str]:
    """The torch module scopes of an ONNX node, outermost first ('' for the root), from its metadata ([] if none)."""
    for prop in node.metadata_props:
        if prop.key == NAME_SCOPES:
            with contextlib.suppress(ValueError, SyntaxError):
                scopes = ast.literal_eval(prop.value)
                if isinstance(scopes, list):
                    return [str(s) for s in scopes]
    return []


def module_path(node: Any) -> str | None:
    """The dotted path of the innermost torch module a node was exported from, relative to the PooledEncoder
    ('pooler', 'backbone.encoder.layer.0.attention.self'); '' for the root, None without metadata. The last
    scope is the op itself, not a module."""
    scopes = scope_of(node)
    if not scopes:
        return None
    modules = [s for s in scopes[:-1] if s]
    path = modules[-1] if modules else ""
    return path[len(ROOT_SCOPE):] if path.startswith(ROOT_SCOPE) else path


def name_nodes_by_scope(model: Any) -> int:
    """Rename each node that has scope metadata to '/<module path with / for .>/<its name>', as the TorchScript
    exporter names nodes ('/pooler/node_div'); names stay unique (the old name is kept as the last part). Returns
    how many nodes were renamed. Nodes already named this way are left alone (idempotent)."""
    renamed = 0
    for node in model.graph.node:
        path = module_path(node)
        if path is None or node.name.startswith("/"):
            continue
        prefix = "/" + path.replace(".", "/") + "/" if path else "/"
        node.name = prefix + (node.name or node.op_type)
        renamed += 1
    return renamed


class _SpecialisationWatcher:
    """While torch.export runs `root` in non-strict mode (real Python on fake tensors), forward hooks on every
    module note where a declared dynamic input axis first became a constant."""

    def __init__(self, root: nn.Module, spec: IOSpec) -> None:
        self.root = root
        self.names = {m: n for n, m in root.named_modules()}
        self.axes = [(i, axis, name, t.name) for i, t in enumerate(spec.inputs) for axis, name in t.dynamic_axes.items()]
        self.sizes: list[tuple[Any, str, str]] = []  # (symbolic size, axis name, input name)
        self.stack: list[nn.Module] = []
        self.culprit: str | None = None

    @contextlib.contextmanager
    def watching(self) -> Iterator[None]:
        handles = []
        for module in self.root.modules():
            handles.append(module.register_forward_pre_hook(self._enter))
            handles.append(module.register_forward_hook(self._exit))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def _describe(self, module: nn.Module) -> str:
        path = self.names.get(module, "?")
        path = path[len(ROOT_SCOPE):] if path.startswith(ROOT_SCOPE) else path
        return f"{path or 'the model'} ({type(module).__name__})"

    def _fixed(self) -> bool:
        return any(_is_constant(size) for size, _, _ in self.sizes)

    def _enter(self, module: nn.Module, args: Sequence[Any]) -> None:
        if module is self.root and not self.sizes:
            for i, axis, name, tensor in self.axes:
                if i < len(args) and isinstance(args[i], torch.Tensor):
                    self.sizes.append((args[i].shape[axis], name, tensor))
        if self.culprit is None and self.stack and self._fixed():
            self.culprit = self._describe(self.stack[-1])  # fixed by the module running, before `module` began
        self.stack.append(module)

    def _exit(self, module: nn.Module, args: Sequence[Any], output: Any) -> None:
        if self.culprit is None and self._fixed():
            self.culprit = self._describe(module)
        if self.stack and self.stack[-1] is module:
            self.stack.pop()

    def check_program(self, program: Any) -> None:
        """The exported program's inputs keep every declared dynamic axis symbolic, else ExportError."""
        placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
        user_inputs = program.graph_signature.user_inputs
        shapes = {n.name: n.meta["val"].shape for n in placeholders if n.name in user_inputs and "val" in n.meta}
        inputs = [shapes[n] for n in user_inputs if n in shapes]
        for i, axis, name, tensor in self.axes:
            if i < len(inputs) and _is_constant(inputs[i][axis]):
                where = f" in {self.culprit}" if self.culprit else ""
                raise ExportError(
                    f"torch.export fixed axis {axis} ({name}) of {tensor} to {int(inputs[i][axis])}{where}: the graph "
                    f"would take no other {name}; export with --exporter torchscript"
                )


def _is_constant(size: Any) -> bool:
    if isinstance(size, int):
        return True
    node = getattr(size, "node", None)
    env = getattr(node, "shape_env", None)
    if env is None:
        return False
    return bool(env.replace(node.expr).is_number)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and the exporter log and warn per step (torchvision ops it cannot register, the model's
    TracerWarnings); keep the CLI clean."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "torch._dynamo", "torch.fx", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
