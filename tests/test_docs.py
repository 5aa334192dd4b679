"""The documentation stays in step with the code."""

import subprocess
import sys

from support import ROOT


def test_configuration_page_is_generated_from_the_code():
    result = subprocess.run([sys.executable, "scripts/config_docs.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
