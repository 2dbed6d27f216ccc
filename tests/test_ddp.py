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

sys.path.insert(0, str(Path(__file__).parent))
import pytorch_lightning as pl
from lit_helpers import loaders, make_module_class, trainer_kwargs

from gradcam_callback import GradCAMCallback, ProbeSet


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

    # the probes are sharded: each rank explains 2 of the 4 probes per run (after the 2-probe
    # set-up check), and gathers the other rank's maps
    for r in ranks:
        assert r["explained"] == [2] + [2] * len(r["history"]), r["explained"]

    # ... and the last run's measures equal a single-process run of the same model and probes
    final = torch.load(tmp_path / "final.pt", weights_only=True)
    model = make_module_class(pl)()
    model.load_state_dict(final["model"])
    single = GradCAMCallback(probes=ProbeSet.from_state_dict(final["probes"]), verbose=False)
    _, val = loaders()
    pl.Trainer(**trainer_kwargs(tmp_path / "single", callbacks=[single])).validate(model, val)
    ddp_metrics, one = ranks[0]["history"][-1]["metrics"], single.history[-1]["metrics"]
    compared = [k for k in one if k.startswith(("attention/", "probe/")) and "/class_" not in k]
    assert len(compared) > 10
    for k in compared:
        assert ddp_metrics[k] == pytest.approx(one[k], abs=1e-4, nan_ok=True), k
