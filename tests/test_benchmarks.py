"""Smoke tests of the benchmark scripts: tiny settings, the printed tables' shape, no timings."""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The scripts set torch's thread count (``--threads 1``: fast on a shared machine)."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def tables(text: str) -> dict[str, list[list[str]]]:
    """Markdown tables under ``## title`` headings: ``{title: [header, row, ...]}``."""
    out: dict[str, list[list[str]]] = {}
    title = None
    for line in text.splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
            out[title] = []
        elif line.startswith("|") and title is not None:
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(re.fullmatch(r":?-+:?", c) for c in cells):
                out[title].append(cells)
    return out


def _table(found: dict[str, list[list[str]]], prefix: str) -> list[list[str]]:
    titles = [t for t in found if t.startswith(prefix)]
    assert len(titles) == 1, f"no single table starting with {prefix!r} in {list(found)}"
    return found[titles[0]]


def test_bench_engine_quick(one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_engine")
    results = bench.main(["--quick", "--threads", "1", "--batches", "2", "--jobs", "2"])
    text = capsys.readouterr().out
    found = tables(text)

    time_rows = _table(found, "Time per call")
    assert time_rows[0] == ["model", "batch", "reps", *bench.METHODS]
    assert [r[:3] for r in time_rows[1:]] == [["resnet18", "2", "2"]]
    assert all(float(c) > 0 for c in time_rows[1][3:])

    ratio_rows = _table(found, "Time ratios")
    assert ratio_rows[0][2:] == [f"{n}/{d}" for n, d, _ in bench.RATIOS]
    assert len(ratio_rows) == 2

    mem_rows = _table(found, "Peak memory")
    assert mem_rows[0] == ["model", "batch", "ours", "inference", "ours/inference"]
    assert mem_rows[1][:2] == ["resnet18", "2"]
    assert float(mem_rows[1][2]) > 0 and float(mem_rows[1][3]) > 0
    assert _table(found, "RSS high-water-mark")[0] == ["model", "batch", "ours", "inference"]

    targets = _table(found, "Targets")
    assert targets[0] == ["target", "config", "value", "verdict"]
    assert {r[3] for r in targets[1:]} <= {"met", "MISSED"}
    assert len(targets) - 1 == 4 + 1  # four time targets and the memory target
    assert "loadavg start:" in text and "loadavg end:" in text
    assert set(results["time"]["resnet18/b2"]) == set(bench.METHODS)


def test_bench_overhead_quick(one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_overhead")
    results = bench.main(["--quick", "--threads", "1"])
    text = capsys.readouterr().out
    found = tables(text)

    fit_rows = _table(found, "Fit time")
    assert fit_rows[0] == ["arm", "reps", "median", "min", "max"]
    assert [r[0] for r in fit_rows[1:]] == [
        "off (no callback)",
        "on (GradCAMCallback())",
        "on: inside the callback's hooks",
    ]
    overhead = _table(found, "Overhead")
    assert overhead[0] == ["measure", "overhead %"] and len(overhead) == 4
    parts = _table(found, "Where the callback's time goes")
    names = [r[0] for r in parts[1:]]
    assert "hook on_validation_epoch_end" in names and "engine: GradCAM.explain" in names
    targets = _table(found, "Targets")
    assert [r[2] in ("met", "MISSED") for r in targets[1:]] == [True, True]
    assert results["fits"]["on"][0]["runs"] >= 1


def test_bench_run_cost_quick(one_thread: None, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _load("bench_run_cost")
    results = bench.main(["--quick", "--threads", "1"])
    found = tables(capsys.readouterr().out)

    cost = _table(found, "Per-run cost")
    assert cost[0][:5] == ["workload", "probes", "analysis on", "runs", "engine calls/run"]
    assert cost[0][-2:] == ["cost (inside)", "cost (independent)"]
    # the default set-up: Lightning's default checkpointing on
    label = "smallcnn 32px + checkpoints"
    assert [r[:2] for r in cost[1:]] == [[label, "16 (default)"], [label, "16"]]
    for row in cost[1:]:
        assert row[2] == "worker"  # at defaults the analysis leaves the training thread
        assert int(row[3]) == 2  # one validation run per epoch (2 epochs; baseline apart)
        assert int(row[4]) == 1  # 16 probes: one chunk of the callback's batch_size
        assert float(row[-1]) > 0 and float(row[-2]) > 0
    stages = _table(found, "Cost by stage")
    assert [r[2] for r in stages[1:]] == ["baseline", "validation"] * 2
    assert [int(r[3]) for r in stages[1:]] == [1, 2] * 2
    parts = _table(found, "Where a run's time goes")
    assert "engine: GradCAM.explain" in parts[0]
    # the monitor runs on the worker thread: nothing of it inside the hooks
    assert "monitor: ShortcutMonitor.analyze" not in parts[0]
    worst = _table(found, "Worst case")
    assert [r[0] for r in worst[1:]] == ["shortcut (correlation 1.0)", "clean (no shortcut)"]
    targets = _table(found, "Targets")
    assert [r[1] for r in targets[1:]] == ["smallcnn 32px"] * 2
    assert {r[3] for r in targets[1:]} <= {"met", "MISSED"}
    fit = results["fits"][0]
    assert fit["layers"] and all(r["independent_s"] > 0 for r in fit["runs"])
    # every run was analysed once, on the worker, and collected on the training thread
    assert [r["analysis_thread"] for r in fit["runs"]] == ["worker"] * 3
    assert all(r["analysis_s"] > 0 and r["collect_s"] >= 0 for r in fit["runs"])
