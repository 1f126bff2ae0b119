"""The `poolx` command as a user meets it: exit codes, one-line errors on stderr with no traceback, nothing left
half-written. Runs the real exporter and verifier on a tiny BERT; a few cases run the installed console script
in a subprocess to see exactly what a user sees."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from poolx.cli import app
from poolx.manifest import MANIFEST, Manifest, checksum_tree

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int, *needles: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def exported(tiny_models, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "weighted"
    result = run("export", tiny_models["bert"], "--pooling", "weighted", "--layer-start", "2", "-o", out)
    assert result.exit_code == 0, result.stderr
    assert "exported" in result.stdout and "poolx verify" in result.stdout
    assert "freshly initialised" in result.stderr  # an untrained learned pooler is pointed out
    return out


def fresh_copy(exported: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(exported, tmp_path / "copy"))


def test_verify_passes_with_table_and_json(exported):
    result = run("verify", exported)
    assert result.exit_code == 0, result.stderr
    assert "sentence_embedding" in result.stdout and "pass" in result.stdout and "checksums" in result.stdout
    result = run("verify", exported, "--json")
    report = json.loads(result.stdout)
    assert report["passed"] is True and result.exit_code == 0
    (out,) = report["outputs"]
    assert set(out) >= {"name", "max_abs", "max_rel", "min_cosine", "required_atol", "passed"}
    assert out["required_atol"] <= out["atol"]


def test_verify_fails_with_exit_1_when_numbers_differ(exported, tmp_path):
    """A graph that no longer computes what eager computes (here: the stored pooler weights changed, the manifest
    re-signed so the directory itself looks intact) fails loudly, exit 1."""
    import torch
    from safetensors.torch import load_file, save_file

    d = fresh_copy(exported, tmp_path)
    state = load_file(str(d / "pooler.safetensors"))
    state["pooler.layer_weights"] = torch.tensor([1.0, 2.0, 5.0])
    save_file(state, str(d / "pooler.safetensors"))
    m = Manifest.read(d)
    m.files = checksum_tree(d)
    m.write(d)
    result = run("verify", d)
    assert result.exit_code == 1
    assert "FAIL" in result.stdout and "verify failed" in result.stderr
    assert json.loads(run("verify", d, "--json").stdout)["passed"] is False


def test_verify_rejects_an_edited_or_corrupted_graph(exported, tmp_path):
    d = fresh_copy(exported, tmp_path)
    data = bytearray((d / "model.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "model.onnx").write_bytes(bytes(data))
    one_line_error(run("verify", d), 2, "model.onnx does not match its sha256", "re-export")


def test_verify_rejects_a_manifest_that_does_not_match_the_graph(exported, tmp_path):
    d = fresh_copy(exported, tmp_path)
    data = json.loads((d / MANIFEST).read_text())
    data["io"]["outputs"][0]["name"] = "embedding"
    (d / MANIFEST).write_text(json.dumps(data))
    result = run("verify", d)
    assert result.exit_code == 1 and "interface" in result.stdout and "FAIL" in result.stdout


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: (d / MANIFEST).unlink(), "has no manifest.json"),
        (lambda d: (d / MANIFEST).write_text("{not json"), "not a valid poolx manifest"),
        (lambda d: (d / "tokenizer.json").unlink(), "lacks tokenizer.json"),
        (lambda d: (d / "extra.bin").write_bytes(b"x"), "holds extra.bin"),
    ],
)
def test_verify_rejects_a_broken_directory(exported, tmp_path, mutate, needle):
    d = fresh_copy(exported, tmp_path)
    mutate(d)
    one_line_error(run("verify", d), 2, needle)


def test_verify_missing_directory_and_bad_tolerances(exported):
    one_line_error(run("verify", "/no/such/export"), 2, "is not a directory")
    one_line_error(run("verify", exported, "--atol", "-1"), 2, "atol must be a finite number >= 0")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--pooling", "nope"], ["unknown pooler 'nope'", "poolx poolers"]),
        (["--pooling", "layer-cls", "--layer", "7"], ["layer 7 is out of range", "0..4"]),
        (["--pooling", "concat", "--layers", "-1,x"], ["comma-separated integers"]),
        (["--pooling", "weighted", "--layer-start", "9"], ["layer_start 9 is out of range"]),
        (["--pooling", "mean", "--hidden-size", "8"], ["does not take --hidden-size"]),
        (["--pooling", "mean", "--outputs", "logits2"], ["unknown output 'logits2'"]),
        (["--pooling", "mean", "--opset", "9"], ["opset 9 is not supported"]),
        (["--pooling", "mean", "--max-length", "100000"], ["max_length 100000 is out of range"]),
    ],
)
def test_export_bad_options(tiny_models, tmp_path, args, needles):
    out = tmp_path / "out"
    one_line_error(run("export", tiny_models["bert"], "-o", out, *args), 2, *needles)
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written, no temp siblings


def test_export_pooler_on_a_model_without_pooler_head(tiny_models, tmp_path):
    one_line_error(run("export", tiny_models["distilbert"], "-p", "pooler", "-o", tmp_path / "o"), 2, "has no pooler head", "cls, mean")
    one_line_error(
        run("export", tiny_models["deberta-v2"], "-p", "mean", "--outputs", "pooler_output", "-o", tmp_path / "o"),
        2, "no pooler head",
    )
    assert list(tmp_path.iterdir()) == []


def test_export_missing_or_non_model_directory(tmp_path):
    one_line_error(run("export", tmp_path / "missing", "-o", tmp_path / "o"), 2, "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(run("export", tmp_path / "empty", "-o", tmp_path / "o"), 2, "not a model directory", "config.json")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "bert"}')
    one_line_error(run("export", tmp_path / "bad", "-o", tmp_path / "o"), 2, "cannot load")
    one_line_error(run("export", "someone/not-cached-model", "-o", tmp_path / "o"), 2, "never downloads")
    assert not (tmp_path / "o").exists()


def test_export_refuses_an_existing_directory_without_force(exported, tiny_models, tmp_path):
    d = fresh_copy(exported, tmp_path)
    before = checksum_tree(d)
    one_line_error(run("export", tiny_models["bert"], "-p", "cls", "-o", d), 2, "already exists", "--force")
    assert checksum_tree(d) == before
    result = run("export", tiny_models["bert"], "-p", "cls", "-o", d, "--force")
    assert result.exit_code == 0, result.stderr
    assert Manifest.read(d).pooling["name"] == "cls"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]  # the old copy and temp dirs are gone


def test_interrupted_export_leaves_nothing(tiny_models, tmp_path, monkeypatch):
    import poolx.parity.verify as verify_module
    from poolx.exporter.export import export

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "quick_check", interrupt)
    with pytest.raises(KeyboardInterrupt):
        export(str(tiny_models["bert"]), tmp_path / "o", pooling="mean")
    assert list(tmp_path.iterdir()) == []


def test_poolers_lists_every_pooler():
    from poolx.models import list_poolers

    result = run("poolers")
    assert result.exit_code == 0
    for name in list_poolers():
        assert name in result.stdout
    assert "2·D" in result.stdout and "--layer-start" in result.stdout


def test_console_script_subprocess(exported, tmp_path):
    """What a user's shell sees: the installed entry point, no traceback, exit codes."""
    exe = [sys.executable, "-m", "poolx"]
    ok = subprocess.run([*exe, "embed", str(exported), "hello world", "a"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count("dim 32") == 2
    bad = subprocess.run([*exe, "export", "--pooling", "nope", "-o", str(tmp_path / "x")], capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.startswith("error: unknown pooler")


def test_export_a_saved_poolx_model_directory(tiny_models, tmp_path):
    from poolx.models import PooledEncoder

    PooledEncoder.from_pretrained(str(tiny_models["bert"]), "concat", layers=[-1, 0], num_labels=2).save_pretrained(tmp_path / "m")
    result = run("export", tmp_path / "m", "-o", tmp_path / "e")
    assert result.exit_code == 0, result.stderr
    assert "freshly initialised" not in result.stderr
    m = Manifest.read(tmp_path / "e")
    assert m.pooling["options"] == {"layers": [-1, 0]} and m.pooling["num_labels"] == 2
    one_line_error(run("export", tmp_path / "m", "-p", "mean", "-o", tmp_path / "f"), 2, "holds a trained 'concat' pooler")


def test_requesting_an_absent_provider_is_an_error_not_a_cpu_run(exported):
    one_line_error(run("verify", exported, "--provider", "cuda"), 2, "CUDAExecutionProvider", "onnxruntime-gpu")
    one_line_error(run("embed", exported, "x", "--provider", "tensorrt"), 2, "TensorrtExecutionProvider")
    one_line_error(run("embed", exported, "x", "--provider", "gpu"), 2, "unknown provider 'gpu'")


# ---- found in review: what a careless or unlucky user can do to an export or its directory ------------------
def _resign(d: Path, mutate) -> None:
    data = json.loads((d / MANIFEST).read_text())
    mutate(data)
    (d / MANIFEST).write_text(json.dumps(data))


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda m: m.update(files=None), "not a valid poolx manifest"),
        (lambda m: m.update(files=list(m["files"])), "not a valid poolx manifest"),
        (lambda m: m["tokenizer"].pop("pad_token_id"), "not a valid poolx manifest"),
        (lambda m: m["graph"].update(file="/tmp/elsewhere/model.onnx"), "not listed in 'files'"),
        (lambda m: m["files"].update({"../x": "0" * 64}), "outside"),
    ],
)
def test_verify_rejects_malformed_manifests(exported, tmp_path, mutate, needle):
    d = fresh_copy(exported, tmp_path)
    _resign(d, mutate)
    one_line_error(run("verify", d), 2, needle)


def test_non_finite_outputs_fail_even_when_both_sides_agree(tiny_models, tmp_path):
    """A trained weighted pooler whose weights sum to zero divides by zero: eager and graph agree on inf, and the
    export is still refused (exit 1, nothing written)."""
    import torch

    from poolx.models import PooledEncoder

    model = PooledEncoder.from_pretrained(str(tiny_models["bert"]), "weighted", layer_start=2)
    with torch.no_grad():
        model.pooler.layer_weights.copy_(torch.tensor([1.0, -1.0, 0.0]))
    model.save_pretrained(tmp_path / "m")
    result = run("export", tmp_path / "m", "-o", tmp_path / "e")
    assert result.exit_code == 1 and "NaN or inf" in result.stderr, result.stderr
    assert not (tmp_path / "e").exists()


def test_left_padding_tokenizer_is_exported_right_padded(tiny_models, tmp_path):
    src = Path(shutil.copytree(tiny_models["bert"], tmp_path / "m"))
    config = json.loads((src / "tokenizer_config.json").read_text())
    config["padding_side"] = "left"
    (src / "tokenizer_config.json").write_text(json.dumps(config))
    assert run("export", src, "-p", "cls", "-o", tmp_path / "e").exit_code == 0
    assert json.loads((tmp_path / "e" / "tokenizer_config.json").read_text())["padding_side"] == "right"
    assert run("verify", tmp_path / "e").exit_code == 0


def test_force_replaces_only_an_export(tiny_models, tmp_path):
    (tmp_path / "userdata").mkdir()
    (tmp_path / "userdata" / "thesis.tex").write_text("important")
    one_line_error(run("export", tiny_models["bert"], "-p", "cls", "-o", tmp_path / "userdata", "--force"), 2, "not a poolx export")
    assert (tmp_path / "userdata" / "thesis.tex").read_text() == "important"
    (tmp_path / "empty").mkdir()
    assert run("export", tiny_models["bert"], "-p", "cls", "-o", tmp_path / "empty", "--force").exit_code == 0


def test_interrupted_swap_keeps_the_previous_export(exported, tiny_models, tmp_path, monkeypatch):
    import os

    from poolx.exporter import export as onnx_module

    d = fresh_copy(exported, tmp_path)
    before = checksum_tree(d)
    calls = []
    real_replace = os.replace

    def flaky(src, dst):
        calls.append(src)
        if len(calls) == 2:  # after the old export was moved aside, before the new one is in place
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(onnx_module.os, "replace", flaky)
    with pytest.raises(KeyboardInterrupt):
        onnx_module.export(str(tiny_models["bert"]), d, pooling="cls", force=True)
    monkeypatch.undo()
    assert checksum_tree(d) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy"]


def test_unwritable_or_odd_output_paths(tiny_models, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    one_line_error(run("export", tiny_models["bert"], "-o", tmp_path / "afile" / "out"), 2, "is a file")
    one_line_error(run("export", tiny_models["bert"], "-o", tmp_path / "afile" / "sub" / "out"), 2, "is a file")
    monkeypatch.chdir(tmp_path)
    one_line_error(run("export", tiny_models["bert"], "-o", ".", "--force"), 2, "current directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


def test_failed_export_removes_the_parents_it_made(tiny_models, tmp_path, monkeypatch):
    import poolx.parity.verify as verify_module

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(verify_module, "quick_check", interrupt)
    from poolx.exporter.export import export

    with pytest.raises(KeyboardInterrupt):
        export(str(tiny_models["bert"]), tmp_path / "new" / "deep" / "out", pooling="mean")
    assert list(tmp_path.iterdir()) == []


def test_export_directory_permissions_follow_the_umask(exported):
    assert exported.stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_error_messages_keep_their_brackets(exported):
    result = run("verify", exported, "--provider", "cuda")
    assert "poolx[gpu]" in result.stderr


def test_verify_on_your_own_texts(exported, tmp_path):
    (tmp_path / "mine.txt").write_text("first own text\n\nsecond, in the domain of the user\n", encoding="utf-8")
    result = run("verify", exported, "--texts", tmp_path / "mine.txt", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["passed"] is True
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    one_line_error(run("verify", exported, "--texts", tmp_path / "latin1.txt"), 2, "is not UTF-8")
    (tmp_path / "blank.txt").write_text("\n  \n")
    one_line_error(run("verify", exported, "--texts", tmp_path / "blank.txt"), 2, "has no text")
    one_line_error(run("verify", exported, "--texts", tmp_path / "nope.txt"), 2, "no such file")


@pytest.mark.parametrize("args,message", [
    (["embed", "DIR", "hi", "--normalize", "true"], "--normalize is a switch and takes no value"),
    (["embed", "DIR", "--force", "yes", "hi"], "--force is a switch and takes no value"),
    (["verify", "DIR", "--json", "false"], "--json is a switch and takes no value"),
])
def test_a_switch_given_a_value_is_bad_usage_not_a_text(args, message):
    """`--normalize true` embedded the word "true" (click takes it as the next text) and exited 0."""
    result = run(*args)
    assert result.exit_code == 2 and message in " ".join(result.output.split())


def test_help_shows_no_type_after_a_switch_and_keeps_brackets():
    import re

    out = run("embed", "--help").output
    assert "<bool>" not in out and re.search(r"--normalize\s", out)
    assert "poolx[openvino]" in " ".join(out.replace("│", " ").split())  # help is rich markup: the bracket escaped


@pytest.mark.parametrize("args,message", [
    (["export", "--pooling", "concat", "--layers", "-1,,-2", "-o", "OUT"], "none left empty"),
    (["export", "--pooling", "concat", "--layers", "-1,", "-o", "OUT"], "none left empty"),
    (["embed", "DIR", "hi", "--threads", "0"], "--threads must be at least 1"),
])
def test_empty_list_items_and_zero_threads_are_refused(args, message, exported, tmp_path):
    args = [str(exported) if a == "DIR" else str(tmp_path / "out") if a == "OUT" else a for a in args]
    result = run(*args)
    assert result.exit_code == 2 and message in result.output and "Traceback" not in result.output
    assert not (tmp_path / "out").exists()


def test_poolers_wraps_summaries_instead_of_cutting_them():
    result = CliRunner().invoke(app, ["poolers"], env={"COLUMNS": "80"})
    assert result.exit_code == 0 and "…" not in result.stdout
    assert "`outputs.pooler_output`." in result.stdout  # the end of the `pooler` row's summary, cut before


def test_a_warning_is_one_line_without_python_source(exported, tmp_path, monkeypatch):
    """A Python warning from the library (an fp16 graph on the CPU, auto falling back) reaches the terminal as one
    `warning:` line, not `file.py:83: UserWarning` followed by the source line that raised it."""
    import warnings

    import poolx.runtime.embedder as embedder

    real = embedder.Embedder.__init__

    def warns(self, *a, **k):
        real(self, *a, **k)
        warnings.warn("fp16 graphs are slow on the CPU", stacklevel=2)

    monkeypatch.setattr(embedder.Embedder, "__init__", warns)
    result = run("embed", str(exported), "hi")
    assert result.exit_code == 0
    assert "warning: fp16 graphs are slow on the CPU" in result.stderr
    assert "UserWarning" not in result.stderr and "warnings.warn" not in result.stderr


def test_the_hub_hint_names_the_current_cli():
    from poolx.errors import ModelLoadError
    from poolx.models.loading import resolve_source

    with pytest.raises(ModelLoadError, match="`hf download someone/not-cached`"):
        resolve_source("someone/not-cached")


def test_export_and_verify_say_their_steps_and_a_terminal_shows_them(tiny_models, tmp_path, caplog, monkeypatch):
    """Progress (issue 14): the library says each step on the "poolx" logger (tracing, int8's alphas, the export's
    gate, verify's cases); `poolx export`/`verify` show the latest as a status line on a terminal, nothing on a pipe
    or with --json, and leave the logger as they found it."""
    import logging

    import poolx.cli as cli
    from poolx.exporter.export import export
    from poolx.parity.verify import verify
    from poolx.progress import step

    shown = []

    class Status:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, text):
            shown.append(text)

    class Terminal:
        def isatty(self):
            return True

        def write(self, text):
            return len(text)

        def flush(self):
            pass

    monkeypatch.setattr(cli, "_stderr", lambda: type("Console", (), {"status": lambda self, label: Status()})())
    with caplog.at_level(logging.INFO, logger="poolx"):
        export(str(tiny_models["bert"]), tmp_path / "q", pooling="mean", precision="int8")
        monkeypatch.setattr(sys, "stderr", Terminal())
        with cli._progress("verifying"):
            verify(tmp_path / "q")
    said = [r.getMessage() for r in caplog.records if r.name.startswith("poolx")]
    for expected in ("tracing the model", "int8: int8 weights, rescaling alpha", "checking the graph against eager",
                     "loading the eager PyTorch model", "comparing with eager PyTorch: case 1 of"):
        assert any(m.startswith(expected) for m in said), (expected, said)
    assert shown and all(s.startswith("verifying: ") for s in shown)
    assert any("comparing with eager PyTorch: case" in s for s in shown)
    assert logging.getLogger("poolx").level == logging.NOTSET and len(logging.getLogger("poolx").handlers) == 0
    shown.clear()
    with cli._progress("verifying", show=False):  # --json
        step("anything")
    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a pipe
    with cli._progress("verifying"):
        step("anything")
    assert shown == []


def test_export_takes_the_exporter_and_refuses_a_bad_one_in_one_line(tiny_models, tmp_path):
    result = run("export", str(tiny_models["bert"]), "--pooling", "mean", "-o", str(tmp_path / "t"), "--exporter", "torchscript")
    assert result.exit_code == 0, result.output
    assert "(torchscript exporter)" in result.stdout and Manifest.read(tmp_path / "t").graph["exporter"] == "torchscript"
    for args, message in ((["--exporter", "onnx"], "exporter"), (["--exporter", "dynamo", "--opset", "17"], "opset 17")):
        bad = run("export", str(tiny_models["bert"]), "-o", str(tmp_path / "b"), *args)
        assert bad.exit_code == 2 and message in bad.output and "Traceback" not in bad.output
        assert not (tmp_path / "b").exists()
