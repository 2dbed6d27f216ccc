"""Benchmark the Grad-CAM engine against pytorch-grad-cam, captum and the floors.

Every method runs the *full pipeline* on the same weights, batch and targets: maps upsampled
(bilinear) to the input size and min-max normalised per map.

========== ===================================================================================
method     what one call does
========== ===================================================================================
ours       ``gradcam_callback.GradCAM(model, "layer4")(x, targets)``
ours++     the same with ``method="gradcam++"``
pgc        ``pytorch_grad_cam.GradCAM(model, [model.layer4[-1]])(x, targets)`` (numpy output)
pgc++      ``pytorch_grad_cam.GradCAMPlusPlus``, same layer
captum     ``LayerGradCam(model, model.layer4).attribute(x, targets, relu_attributions=True)``,
           ``LayerAttribution.interpolate(..., "bilinear")``, per-map min-max
floor      one forward (grad mode on, as in training code) + ``torch.autograd.grad`` of the
           target scores down to the ``layer4`` output; no map math
floor-lean the same with the layers below ``layer4`` under ``torch.no_grad`` (the engine's own
           trick without its map math): the least work any Grad-CAM can do
inference  ``torch.inference_mode()`` forward only
========== ===================================================================================

Timing: all methods live in one process, each with its own copy of the model (pytorch-grad-cam
keeps hooks on its model); repetitions are interleaved (the method order rotates every
repetition) and the tables show medians; ratios are medians of the per-repetition ratios (paired,
so slow drift of the machine's load cancels). CUDA times use CUDA events around the call and
``torch.cuda.synchronize()``.

Memory: each (method, model, batch) runs in a fresh subprocess: the model is built, the method
runs once on one image (warm-up: lazy initialisation, library caches), then one measured call on
the batch. CPU: peak of the running sum of the allocation/free events that ``torch.profiler``
records during the call (``profile_memory=True``): the peak tensor memory *added* by the call
(numpy buffers of pytorch-grad-cam are not tensors and not counted; its tensors are), plus the
RSS high-water-mark delta of the same call (``VmHWM`` reset through ``/proc/self/clear_refs``,
then ``VmHWM`` after minus ``VmRSS`` before) as a cross-check.
CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call.

Usage::

    .venv/bin/python benchmarks/bench_engine.py                 # CPU, full matrix (~5 min)
    .venv/bin/python benchmarks/bench_engine.py --quick         # smoke run (< 60 s)
    .venv/bin/python benchmarks/bench_engine.py --device cuda   # GPU, CUDA events
    .venv/bin/python benchmarks/bench_engine.py --models resnet50 --batches 8 --reps 15
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

METHODS: tuple[str, ...] = (
    "ours",
    "ours++",
    "pgc",
    "pgc++",
    "captum",
    "floor",
    "floor-lean",
    "inference",
)
#: (numerator, denominator) pairs reported as paired ratios, with the target where one applies.
RATIOS: tuple[tuple[str, str, float | None], ...] = (
    ("ours", "floor", 1.1),
    ("ours", "floor-lean", None),
    ("ours", "pgc", 0.5),
    ("ours++", "pgc++", 0.5),
    ("ours", "captum", 1.0),
)
MEMORY_TARGET = 1.5  # ours / inference
#: Methods measured for memory by default (the ++ variants keep the same tensors as their base,
#: floor-lean the same as ours).
MEMORY_METHODS: tuple[str, ...] = ("ours", "pgc", "captum", "floor", "inference")


# ------------------------------------------------------------------------------ environment
def loadavg() -> str:
    """The first three fields of ``/proc/loadavg`` (``"n/a"`` off Linux)."""
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def oversubscription_note(threads: int) -> str | None:
    """A warning line when the 1-minute load exceeds the free cores for ``threads`` threads.

    With more runnable threads than cores, every OpenMP parallel region waits for descheduled
    peers: small ops slow down by tens of times, which distorts ratios. One thread avoids it.
    """
    try:
        load1 = float(loadavg().split()[0])
    except ValueError:
        return None
    cores = os.cpu_count() or 1
    if threads > 1 and load1 > cores - threads + 1.5:  # our own start-up counts about 1
        return (
            f"WARNING: load {load1:.1f} on {cores} cores with {threads} torch threads: OpenMP "
            "regions wait for descheduled threads and times inflate; use --threads 1 here"
        )
    return None


def machine_info(device: str) -> dict[str, str]:
    """CPU model, core count, torch threads, versions and (for CUDA) the GPU name."""
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    for dist, key in (
        ("torchvision", "torchvision"),
        ("grad-cam", "grad-cam"),
        ("captum", "captum"),
        ("pytorch-lightning", "lightning"),
    ):
        try:
            from importlib.metadata import version

            info[key] = version(dist)
        except Exception:
            info[key] = "n/a"
    if device == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table (first two columns left-aligned, the rest right-aligned)."""
    align = ["---" if i < 2 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(align) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value: float | None, digits: int = 1) -> str:
    """Fixed-point number, or ``-`` for a missing value."""
    return "-" if value is None else f"{value:.{digits}f}"


# ------------------------------------------------------------------------------ methods
def build_model(name: str, seed: int = 0) -> nn.Module:
    """A torchvision classifier with random weights (seeded), in eval mode."""
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    return model.eval()


def _minmax(maps: Tensor) -> Tensor:
    flat = maps.flatten(1)
    lo = flat.amin(1, keepdim=True)
    span = flat.amax(1, keepdim=True) - lo
    return ((flat - lo) / span.clamp_min(1e-7)).view_as(maps)


def make_runner(method: str, model: nn.Module, targets: Tensor) -> Callable[[Tensor], Any]:
    """A callable ``x -> maps`` (or logits for ``inference``) for one method on its own model.

    ``model`` must be a private copy: pytorch-grad-cam keeps forward hooks on it.
    """
    layer = model.layer4
    tgt_list = [int(t) for t in targets.tolist()]

    if method in ("ours", "ours++"):
        from gradcam_callback import GradCAM

        cam = GradCAM(model, "layer4", method="gradcam" if method == "ours" else "gradcam++")
        return lambda x: cam(x, targets[: x.shape[0]])

    if method in ("pgc", "pgc++"):
        from pytorch_grad_cam import GradCAM as PGCGradCAM
        from pytorch_grad_cam import GradCAMPlusPlus
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = PGCGradCAM if method == "pgc" else GradCAMPlusPlus
        pgc = cls(model=model, target_layers=[layer[-1]])
        pgc_targets = [ClassifierOutputTarget(t) for t in tgt_list]
        return lambda x: pgc(input_tensor=x, targets=pgc_targets[: x.shape[0]])

    if method == "captum":
        from captum.attr import LayerAttribution, LayerGradCam

        lgc = LayerGradCam(model, layer)

        def captum_call(x: Tensor) -> Tensor:
            attr = lgc.attribute(x, target=targets[: x.shape[0]], relu_attributions=True)
            up = LayerAttribution.interpolate(attr, tuple(x.shape[-2:]), "bilinear")
            return _minmax(up[:, 0])

        return captum_call

    if method in ("floor", "floor-lean"):
        lean = method == "floor-lean"
        acts: list[Tensor] = []

        def hook(_m: nn.Module, _i: Any, out: Tensor) -> Tensor | None:
            if lean:
                out = out.detach().requires_grad_(True)
                torch.set_grad_enabled(True)
            acts.append(out)
            return out if lean else None

        layer.register_forward_hook(hook)

        def floor_call(x: Tensor) -> Tensor:
            acts.clear()
            with torch.set_grad_enabled(not lean):
                out = model(x)
                score = out.gather(1, targets[: x.shape[0], None]).sum()
                (grad,) = torch.autograd.grad(score, acts[0])
            acts.clear()
            return grad

        return floor_call

    if method == "inference":

        def inference_call(x: Tensor) -> Tensor:
            with torch.inference_mode():
                return model(x)

        return inference_call

    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def make_inputs(batch: int, size: int, device: str, seed: int = 1) -> tuple[Tensor, Tensor]:
    """Images ``[batch, 3, size, size]`` and target classes ``[batch]`` (seeded)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    return x.to(device), t.to(device)


# ------------------------------------------------------------------------------ timing
def time_call(fn: Callable[[], Any], device: str) -> float:
    """Milliseconds of one call (CUDA: events around the call, then synchronise)."""
    if device == "cuda":
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        return float(start.elapsed_time(end))
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1e3


def time_config(
    model_name: str,
    batch: int,
    size: int,
    methods: Sequence[str],
    reps: int,
    warmup: int,
    device: str,
) -> dict[str, list[float]]:
    """Interleaved repetitions of every method on one (model, batch): ``{method: [ms, ...]}``."""
    base = build_model(model_name).to(device)
    x, targets = make_inputs(batch, size, device)
    runners = {m: make_runner(m, copy.deepcopy(base), targets) for m in methods}
    del base
    for _ in range(warmup):
        for m in methods:
            runners[m](x)
    times: dict[str, list[float]] = {m: [] for m in methods}
    order = list(methods)
    for r in range(reps):
        k = r % len(order)
        for m in order[k:] + order[:k]:
            times[m].append(time_call(lambda m=m: runners[m](x), device))
    runners.clear()
    gc.collect()
    return times


def paired_ratio(times: dict[str, list[float]], num: str, den: str) -> float | None:
    """Median over repetitions of ``times[num][i] / times[den][i]``."""
    if num not in times or den not in times:
        return None
    return statistics.median(a / b for a, b in zip(times[num], times[den]))


# ------------------------------------------------------------------------------ memory
def _status_kb(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), or ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_rss_peak() -> bool:
    """Reset the RSS high-water mark to the current RSS (Linux >= 4.0); ``False`` if unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def memory_child(method: str, model_name: str, batch: int, size: int, device: str) -> dict:
    """Measure one call's added peak memory in this (fresh) process; see the module docstring."""
    model = build_model(model_name).to(device)
    x, targets = make_inputs(batch, size, device)
    fn = make_runner(method, model, targets)
    result: dict[str, Any] = {"method": method, "model": model_name, "batch": batch}
    if device == "cuda":
        fn(x[:1])  # warm-up on one image
        gc.collect()
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn(x)
        torch.cuda.synchronize()
        result["peak_mb"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        return result
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True):
        fn(x[:1])  # warm-up on one image; also loads the profiler's libraries
    gc.collect()
    # One call under the profiler (its libraries were loaded by the warm-up): tensor allocations
    # from the profiler's events, RSS from the high-water mark (reset to the current RSS first).
    reset = _reset_rss_peak()
    rss_before = _status_kb("VmRSS")
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn(x)
    hwm = _status_kb("VmHWM")
    if reset and rss_before is not None and hwm is not None:
        result["rss_mb"] = max(0, hwm - rss_before) / 1024
    # Peak of the running sum of the allocation (+) and free (-) events, in time order.
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    events.sort(key=lambda e: e.start_ns())
    running = peak = 0
    for e in events:
        if e.device_type() == torch.autograd.DeviceType.CPU:
            running += e.nbytes()
            peak = max(peak, running)
    result["peak_mb"] = peak / 2**20
    return result


def run_memory_child(
    method: str, model_name: str, batch: int, size: int, device: str, threads: int
) -> dict:
    """Run :func:`memory_child` in a fresh interpreter; returns its JSON result."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--memory-child",
        method,
        model_name,
        str(batch),
        "--size",
        str(size),
        "--device",
        device,
        "--threads",
        str(threads),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError(
        f"memory child {method} {model_name} b{batch} failed:\n{proc.stderr[-2000:]}"
    )


# ------------------------------------------------------------------------------ main
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--models", default=None, help="comma-separated (resnet18,resnet50)")
    p.add_argument("--batches", default=None, help="comma-separated (1,8,32)")
    p.add_argument("--size", type=int, default=None, help="input height and width (224)")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    p.add_argument("--reps", type=int, default=None, help="timed repetitions (default: by size)")
    p.add_argument("--warmup", type=int, default=None, help="untimed calls per method")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all)")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument(
        "--memory-methods",
        default=None,
        help="methods measured for memory (default: ours,pgc,captum,floor,inference)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="memory subprocesses at a time (peaks are per process; default: cores, at most 4)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write raw results here")
    p.add_argument("--quick", action="store_true", help="smoke run: tiny settings (< 60 s)")
    p.add_argument("--memory-child", nargs=3, metavar=("METHOD", "MODEL", "BATCH"))
    args = p.parse_args(argv)
    quick = args.quick
    args.models = args.models or ("resnet18" if quick else "resnet18,resnet50")
    args.batches = args.batches or ("1,2" if quick else "1,8,32")
    args.size = args.size or (64 if quick else 224)
    if quick:
        args.reps = args.reps or 2
        args.warmup = 1 if args.warmup is None else args.warmup
        args.memory_methods = args.memory_methods or "ours,inference"
        args.threads = args.threads or 1  # a smoke run: robust on a loaded machine
    return args


def default_reps(model: str, batch: int, device: str) -> int:
    """Repetitions that keep the default CPU run near five minutes on two cores."""
    if device == "cuda":
        return 30
    work = batch * (2.3 if model == "resnet50" else 1.0)  # ~ relative cost of a call
    return 7 if work <= 2.5 else 5 if work <= 20 else 3


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print markdown tables, return the raw results."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        method, model_name, batch = args.memory_child
        res = memory_child(method, model_name, int(batch), args.size, args.device)
        print(json.dumps(res))
        return res
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")

    models = [m for m in args.models.split(",") if m]
    batches = [int(b) for b in args.batches.split(",") if b]
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"unknown methods {unknown}; choose from {', '.join(METHODS)}")
    default_mem = ",".join(m for m in MEMORY_METHODS if m in methods)
    mem_methods = [m for m in (args.memory_methods or default_mem).split(",") if m]
    warmup = args.warmup if args.warmup is not None else (5 if args.device == "cuda" else 1)
    threads = torch.get_num_threads()

    info = machine_info(args.device)
    t_start = time.perf_counter()
    print(f"# bench_engine: device={args.device} size={args.size}x{args.size} threads={threads}")
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))
    print(f"loadavg start: {loadavg()}")
    if note := oversubscription_note(torch.get_num_threads()):
        print(note)
    results: dict[str, Any] = {"args": vars(args) | {"json": str(args.json)}, "info": info}
    results["time"], results["memory"] = {}, {}
    for model_name in models:
        for batch in batches:
            reps = args.reps or default_reps(model_name, batch, args.device)
            key = f"{model_name}/b{batch}"
            times = time_config(model_name, batch, args.size, methods, reps, warmup, args.device)
            results["time"][key] = times
            elapsed = time.perf_counter() - t_start
            print(
                f"  [{elapsed:.0f} s] timed {key}: {reps} reps, load {loadavg()}", file=sys.stderr
            )
    if not args.no_memory:
        from concurrent.futures import ThreadPoolExecutor

        jobs = [
            (m, model_name, batch)
            for model_name in models
            for batch in batches
            for m in mem_methods
        ]
        n_jobs = args.jobs or max(1, min(4, os.cpu_count() or 1))
        with ThreadPoolExecutor(max_workers=n_jobs) as pool:
            done = pool.map(lambda j: run_memory_child(*j, args.size, args.device, threads), jobs)
            for (m, model_name, batch), res in zip(jobs, done):
                results["memory"].setdefault(f"{model_name}/b{batch}", {})[m] = res
        elapsed = time.perf_counter() - t_start
        print(f"  [{elapsed:.0f} s] memory done, load {loadavg()}", file=sys.stderr)
    results["loadavg_end"] = loadavg()
    results["seconds"] = time.perf_counter() - t_start

    print(report(results, models, batches, methods, mem_methods, args.device))
    print(f"loadavg end: {results['loadavg_end']}  (wall {results['seconds']:.0f} s)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return results


def report(
    results: dict[str, Any],
    models: Sequence[str],
    batches: Sequence[int],
    methods: Sequence[str],
    mem_methods: Sequence[str],
    device: str,
) -> str:
    """The markdown tables (time, ratios, memory) and the target verdicts."""
    out: list[str] = []
    keys = [(m, b, f"{m}/b{b}") for m in models for b in batches]
    rows = []
    for m, b, key in keys:
        t = results["time"][key]
        reps = len(next(iter(t.values())))
        rows.append([m, b, reps, *(fmt(statistics.median(t[x])) for x in methods)])
    out += ["", "## Time per call, ms (median)", ""]
    out.append(md_table(["model", "batch", "reps", *methods], rows))

    ratios = [(n, d, tgt) for n, d, tgt in RATIOS if n in methods and d in methods]
    rows, verdicts = [], []
    for m, b, key in keys:
        row: list[Any] = [m, b]
        for n, d, tgt in ratios:
            r = paired_ratio(results["time"][key], n, d)
            row.append(fmt(r, 2))
            if tgt is not None and r is not None:
                verdicts.append((f"{n}/{d} <= {tgt}", m, b, r, r <= tgt))
        rows.append(row)
    if ratios:
        out += ["", "## Time ratios (median of paired per-repetition ratios)", ""]
        out.append(md_table(["model", "batch", *(f"{n}/{d}" for n, d, _ in ratios)], rows))

    if results["memory"]:
        rows, rss_rows = [], []
        for m, b, key in keys:
            mem = results["memory"][key]
            row = [m, b, *(fmt(mem[x]["peak_mb"]) for x in mem_methods)]
            ratio = None
            if "ours" in mem and "inference" in mem and mem["inference"]["peak_mb"] > 0:
                ratio = mem["ours"]["peak_mb"] / mem["inference"]["peak_mb"]
                verdicts.append((f"memory ours/inference <= {MEMORY_TARGET}", m, b, ratio,
                                 ratio <= MEMORY_TARGET))  # fmt: skip
            rows.append([*row, fmt(ratio, 2)])
            if device == "cpu":
                rss_rows.append([m, b, *(fmt(mem[x].get("rss_mb")) for x in mem_methods)])
        what = "torch.profiler allocation peak" if device == "cpu" else "max_memory_allocated"
        out += ["", f"## Peak memory added by one call, MB ({what}, fresh process each)", ""]
        out.append(md_table(["model", "batch", *mem_methods, "ours/inference"], rows))
        if rss_rows:
            out += ["", "## RSS high-water-mark delta of one call, MB (cross-check)", ""]
            out.append(md_table(["model", "batch", *mem_methods], rss_rows))

    if verdicts:
        out += ["", "## Targets", ""]
        rows = [
            [n, f"{m}/b{b}", fmt(r, 2), "met" if ok else "MISSED"] for n, m, b, r, ok in verdicts
        ]
        out.append(md_table(["target", "config", "value", "verdict"], rows))
    return "\n".join(out)


if __name__ == "__main__":
    main()
