"""`import poolx` and `poolx --help` import neither torch nor onnxruntime nor transformers."""

from __future__ import annotations

import subprocess
import sys


def test_import_and_help_stay_light():
    code = (
        "import sys, poolx, poolx.cli\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(poolx.cli.app, ['--help'])\n"
        "assert r.exit_code == 0 and 'export' in r.stdout\n"
        "r = CliRunner().invoke(poolx.cli.app, ['export', '--help'])\n"
        "assert r.exit_code == 0 and '--layer-start' in r.stdout\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'transformers', 'onnx') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
