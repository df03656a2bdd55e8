import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.long  # minutes of .ci/run's budget: run with pytest -q -m long
def test_benchmark_quick_writes_records_with_ratios(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "experiments.benchmark", "--quick", "--workdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "benchmark.json").read_text())
    (record,) = report["records"]
    assert (record["network"], record["batch"], record["T"]) == ("resnet20", 8, 4)
    for label in ("ann", "snn", "cos_k1", "cos_k4"):
        timing = record["jax"][label]
        assert len(timing["raw"]) == 2 and 0 < timing["min"] <= timing["median"] <= timing["max"]
    assert record["snn_over_t_ann"] > 0 and record["calibration_overhead"] > 0
    # The compiled program must at least hold the largest site's input currents [T, B, neurons].
    assert record["memory"]["temp_bytes"] >= record["memory"]["largest_site_bytes"] // 2 > 0
    if record["torch"] is not None:
        assert record["speedup_vs_spikingjelly"] > 0
    assert "| resnet20 | 8 | 4 |" in (tmp_path / "benchmark.md").read_text()
