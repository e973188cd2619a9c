"""demo.py's command line refuses bad values before any stage runs."""
from __future__ import annotations

import subprocess
import sys

import pytest

from mclip_hbt.paths import REPO_ROOT


@pytest.mark.parametrize("args, message", [
    (["sweep", "--alphas", "0,2"], "--alphas"),
    (["sweep", "--seeds", "0,x"], "--seeds"),
    (["run", "--alpha", "1.5"], "--alpha"),
])
def test_bad_values_are_refused(tmp_path, args, message):
    result = subprocess.run([sys.executable, str(REPO_ROOT / "demo.py"), *args, "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()
