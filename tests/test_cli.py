"""The ``unime`` command: its help lists every command, and the job scripts are its wrappers."""

from __future__ import annotations

import subprocess
import sys

from tests.helpers import ROOT, load_script
from unime import cli


def test_help_lists_every_command(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("run", "mine", "build-index", "serve", "tiny", "demo-data", "demo-models"):
        assert f"  {name} " in out, name


def test_an_unknown_command_is_refused_with_the_list(capsys):
    assert cli.main(["bogus"]) == 2
    assert "unknown command 'bogus'" in capsys.readouterr().err


def test_tools_receive_their_arguments(tmp_path):
    assert cli.main(["tiny", "build", str(tmp_path / "tiny")]) == 0
    assert (tmp_path / "tiny" / "embedder" / "config.json").exists()


def test_the_console_script_is_declared_and_the_job_scripts_run_without_path_edits():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["unime"] == "unime.cli:main"
    for script in ("full_pipeline.py", "mine.py", "build_index.py"):
        text = (ROOT / "ray_jobs" / script).read_text()
        assert "sys.path" not in text and "from unime.cli import run_pipeline" in text, script
        assert callable(load_script(f"ray_jobs/{script}").main)
    out = subprocess.run([sys.executable, "-m", "unime.cli", "--help"], capture_output=True, text=True, check=True)
    assert "commands:" in out.stdout
