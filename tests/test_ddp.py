"""DDP with 2 CPU processes (gloo): no hang, media once per run, same decisions on every rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed missing")
def test_ddp_two_cpu_processes(tmp_path):
    script = Path(__file__).parent / "ddp_script.py"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("LOCAL_RANK", None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,  # a hang fails the test instead of blocking the suite
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    # same probes, same runs, same metric values and flags on both ranks
    assert ranks[0]["probe_sum"] == ranks[1]["probe_sum"]
    assert json.dumps(ranks[0]["history"]) == json.dumps(ranks[1]["history"])  # NaN-safe
    assert ranks[0]["flags"] == ranks[1]["flags"]
    assert [h["stage"] for h in ranks[0]["history"]] == ["baseline", "fit", "fit"]

    # media written once per run, by rank 0 only
    acc = EventAccumulator(str(tmp_path / "tb" / "version_0"), size_guidance={"images": 0})
    acc.Reload()
    steps = [e.step for e in acc.Images("gradcam/overlays")]
    assert len(steps) == 3 and len(set(steps)) == 3
    assert [e.step for e in acc.Scalars("gradcam/probe/confidence")] == steps
    event_files = list((tmp_path / "tb").rglob("events.out.tfevents*"))
    assert len(event_files) == 1
