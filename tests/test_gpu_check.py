"""scripts/gpu_check.sh on a machine without CUDA: the cuda tests skip, the script says so and exits 0."""
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_skips_cleanly_without_cuda(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OUT": str(tmp_path / "table.md")}  # hide any GPU
    res = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True,
                         timeout=300, env=env, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    assert "no CUDA device" in res.stdout and "skipped (run it on a GPU machine)" in res.stdout
    assert " skipped" in res.stdout and "passed" not in res.stdout and "failed" not in res.stdout
    assert not (tmp_path / "table.md").exists()
