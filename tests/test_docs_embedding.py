"""docs/embedding.md's program runs as written, and prints what the guide says."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "embedding.md"


def test_the_embedding_guide_runs_as_written(tmp_path: Path) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 1, "the guide has one program"
    (tmp_path / "guide.py").write_text(blocks[0])
    res = subprocess.run([sys.executable, "guide.py"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    out = res.stdout.splitlines()
    assert out[0] == "a new database"
    assert out[1] == "201"
    assert "idempotency_key_reused" in out
    assert any(line.startswith("invalid") for line in out)  # the vote of 2
    assert "assertion 1000000000 does not exist" in out
    assert (tmp_path / "ledger" / "LOCK").exists()
