"""
The README's Python code runs as written: its ```python blocks, in order, in one
fresh interpreter (the blocks may build on each other), from an empty working
directory, with ``CI`` set so that blocks may shrink their loops.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]
README = ROOT / "README.md"

# Runs the blocks in one namespace and names the block that failed.
RUNNER = """
import json, sys, traceback
blocks = json.loads(sys.stdin.read())
namespace = {"__name__": "__main__"}
for i, (line, source) in enumerate(blocks):
    try:
        exec(compile(source, f"README.md, block {i + 1} (line {line})", "exec"), namespace)
    except BaseException:
        traceback.print_exc()
        sys.exit(f"README.md: python block {i + 1} of {len(blocks)}, starting at line {line}, failed")
"""


def python_blocks(markdown: str):
    """``(line, source)`` of every fenced block tagged ``python``."""
    pattern = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
    return [(markdown[: m.start()].count("\n") + 2, m.group(1)) for m in pattern.finditer(markdown)]


def run_blocks(markdown: str, cwd: Path):
    env = dict(os.environ, CI="1", PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env.setdefault("OMP_NUM_THREADS", "1")
    env["MPLBACKEND"] = "Agg"
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", RUNNER],
        input=json.dumps(python_blocks(markdown)),
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=900,
    )


def test_block_extraction_keeps_order_lines_and_only_python():
    text = "intro\n```python\na = 1\n```\n\n```bash\nrm -rf /\n```\n```python\nb = a + 1\n```\n"
    assert python_blocks(text) == [(3, "a = 1\n"), (10, "b = a + 1\n")]


def test_a_failing_block_is_named(tmp_path):
    result = run_blocks("```python\nx = 1\n```\n```python\nraise ValueError(x)\n```\n", tmp_path)
    assert result.returncode != 0 and "python block 2 of 2, starting at line 5" in result.stderr


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks(README.read_text())
    assert blocks, "README.md has no ```python block"
    result = run_blocks(README.read_text(), tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
