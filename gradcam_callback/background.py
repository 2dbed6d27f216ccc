"""A run's analysis off the training thread: the model's shadow and the analysis worker.

At a scheduled run the training thread does only what needs the model as it trains: the Grad-CAM
maps (one engine call) and a refresh of the :class:`ModelShadow`, an eval-mode copy of the
model's parameters and buffers taken at that moment. The :class:`AnalysisWorker` thread then does
everything else (the monitor's measures and rules, its causal checks as forwards of the shadow,
the periodic quality metrics) while training goes on. The callback collects the finished runs in
order at its next hooks, and waits for the run in flight before anything that must see it: the
next run, the end of the fit, an exception. A checkpoint saved while a run is in flight holds the
run's inputs instead (:class:`~gradcam_callback.runs.InFlight`), and a resumed fit finishes it.

The shadow is a *structural* copy: new modules with their own parameter, buffer and hook
dictionaries, sharing every other attribute with the model (a dataset a module holds is not
copied). The worker never touches the model, its gradients, its mode or the global random
number generators (the analysis draws from none: :mod:`gradcam_callback.metrics`), so training is
bit-identical with and without it. :func:`sync_reason` says when a run must stay on the training
thread. No Lightning import.
"""

from __future__ import annotations

import copy
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import Tensor, nn

from .threads import quiet_pool

__all__ = [
    "AnalysisWorker",
    "Finished",
    "ModelShadow",
    "clone_structure",
    "sync_reason",
]

_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_state_dict_hooks",
    "_state_dict_pre_hooks",
    "_load_state_dict_pre_hooks",
    "_load_state_dict_post_hooks",
)


def clone_structure(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with new modules, parameters and buffers (values copied, detached,
    ``requires_grad=False``), in eval mode; every other attribute is shared with ``model``.

    Hooks registered on ``model`` are kept (a forward may need them, as old-style weight norm
    does), in dictionaries of the copy's own, so hooks added to ``model`` later never reach it.

    Raises:
        ValueError: the copy would call the model itself (:func:`_check_detached`).
    """
    memo: dict[int, Any] = {}  # a module or tensor used twice (tied weights) stays one

    def tensor(t: Tensor | None, param: bool) -> Tensor | None:
        if t is None:
            return None
        if id(t) not in memo:
            c = t.detach().clone()
            memo[id(t)] = nn.Parameter(c, requires_grad=False) if param else c
        return memo[id(t)]

    def clone(module: nn.Module) -> nn.Module:
        if id(module) in memo:
            return memo[id(module)]
        new = copy.copy(module)  # a new __dict__ holding the same attribute objects
        memo[id(module)] = new
        new._parameters = {k: tensor(p, True) for k, p in module._parameters.items()}
        new._buffers = {k: tensor(b, False) for k, b in module._buffers.items()}
        new._modules = {k: None if m is None else clone(m) for k, m in module._modules.items()}
        for name in _HOOK_DICTS:
            hooks = module.__dict__.get(name)
            if hooks is not None:
                new.__dict__[name] = type(hooks)(hooks)
        new.training = False
        return new

    with torch.no_grad():
        copy_ = clone(model)
    _check_detached(model, copy_)
    return copy_


def _check_detached(model: nn.Module, copy_: nn.Module) -> None:
    """The copy must never run a module of ``model``: a bound method of one of its modules held
    as a plain attribute (``self.head_fn = self.head.forward``) or as a hook (a LightningModule
    capturing features with ``layer.register_forward_hook(self.capture)``), or a compiled
    submodule (whose compiled forward is bound to the original), would call the training model,
    or write into it, from the worker.

    Raises:
        ValueError: naming the attribute.
    """
    originals = {id(m) for m in model.modules()}
    for name, module in copy_.named_modules():
        if type(module).__name__ == "OptimizedModule":
            raise ValueError(f"{name or 'the model'} is a torch.compile'd module")
        held = list(vars(module).items())
        for hooks in _HOOK_DICTS:
            held += [(f"{hooks}[{k}]", h) for k, h in (module.__dict__.get(hooks) or {}).items()]
        for attr, value in held:
            owner = getattr(value, "__self__", None)
            if isinstance(owner, nn.Module) and id(owner) in originals:
                where = f"{name}.{attr}" if name else attr
                method = f"{type(owner).__name__}.{getattr(value, '__name__', '?')}"
                raise ValueError(f"{where} is {method}, a method of one of the model's own modules")


def _tensors(model: nn.Module) -> list[tuple[str, Tensor]]:
    return [*model.named_parameters(), *model.named_buffers()]


def _layout(tensors: list[tuple[str, Tensor]]) -> list[tuple[str, Any, Any, Any]]:
    return [(n, t.shape, t.dtype, t.device) for n, t in tensors]


class ModelShadow:
    """An eval-mode copy of a model whose weights follow the model's at each :meth:`refresh`.

    Memory: one copy of the parameters and buffers (never of activations or optimizer state).
    """

    def __init__(self) -> None:
        self.model: nn.Module | None = None
        self._layout: list[tuple[str, Any, Any, Any]] = []
        self._targets: list[Tensor] = []  # the copy's tensors, in the model's order

    def refresh(self, model: nn.Module) -> nn.Module:
        """Copy ``model``'s current parameters and buffers into the shadow (a new structural
        copy when their names, shapes, dtypes or devices changed) and return it.

        Call it on the thread that trains, between optimizer steps: the copy is then the model
        exactly as the run's maps saw it. On CUDA the copies are queued on the current stream,
        ahead of any later forward of the shadow.
        """
        sources = _tensors(model)  # one walk of the model per run
        layout = _layout(sources)
        if self.model is None or layout != self._layout:
            self.model, self._layout = clone_structure(model), layout
            self._targets = [t for _, t in _tensors(self.model)]
            return self.model
        with torch.no_grad():
            for dst, (_, src) in zip(self._targets, sources):
                dst.copy_(src)
        return self.model

    def release(self) -> None:
        """Drop the copy (its memory is freed)."""
        self.model, self._layout, self._targets = None, [], []


class Finished:
    """A run the worker has finished: ``value`` (what the job returned) or ``error``."""

    __slots__ = ("error", "value", "what")

    def __init__(self, what: str, value: Any = None, error: BaseException | None = None) -> None:
        self.what, self.value, self.error = what, value, error


class AnalysisWorker:
    """One worker thread that runs jobs in submission order; their results are collected in
    the same order on the calling thread.

    Args:
        max_pending: jobs in flight at most; :meth:`submit` first waits for the oldest one.
    """

    def __init__(self, max_pending: int = 1) -> None:
        self.max_pending = max(1, int(max_pending))
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[str, Future[Any]]] = deque()
        self._done: list[Finished] = []

    @property
    def busy(self) -> bool:
        """Some job is queued or running."""
        return bool(self._pending)

    def submit(self, job: Callable[[], Any], what: str) -> None:
        """Queue ``job`` (no arguments) on the worker thread."""
        while len(self._pending) >= self.max_pending:
            self._done.append(self._settle(*self._pending.popleft()))
        if self._pool is None:
            self._pool = quiet_pool("gradcam-analysis")  # torch on one core there
        self._pending.append((what, self._pool.submit(job)))

    def collect(self, wait: bool = False) -> list[Finished]:
        """The finished jobs in submission order: those done now (``wait=False``, never
        blocks) or all of them (``wait=True``, after the worker has finished every one)."""
        while self._pending and (wait or self._pending[0][1].done()):
            self._done.append(self._settle(*self._pending.popleft()))
        out, self._done = self._done, []
        return out

    def close(self) -> list[Finished]:
        """Finish every job, stop the thread (a later :meth:`submit` starts a new one)."""
        out = self.collect(wait=True)
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        return out

    @staticmethod
    def _settle(what: str, future: Future[Any]) -> Finished:
        try:
            return Finished(what, value=future.result())
        except BaseException as err:  # handed to the training thread, which warns
            return Finished(what, error=err)


#: Precision plugins whose ``forward_context`` is thread-local (autocast) or empty: the shadow's
#: forwards can run on the worker. Others set the process-wide default dtype while a forward
#: runs, which would reach the training thread.
THREAD_SAFE_PRECISION = frozenset({"Precision", "MixedPrecision", "AMPPrecision"})


def sync_reason(
    *,
    enabled: bool,
    on_flag: str,
    world_size: int,
    precision_plugin: Any,
    compiled: bool,
    monitored: Iterable[str],
    prefix: str,
) -> str | None:
    """Why the runs must stay on the training thread (``None``: they can go to the worker).

    Args:
        enabled: the callback's ``async_analysis``.
        on_flag: the callback's ``on_flag``: ``"stop"`` and ``"raise"`` act at the validation
            whose run raised the flag, as EarlyStopping does, so that run cannot wait.
        world_size: processes in the run (DDP ranks must reach each flag at the same step).
        precision_plugin: the trainer's precision plugin (or ``None``).
        compiled: the LightningModule is ``torch.compile``d.
        monitored: the metric names other callbacks monitor (EarlyStopping, ModelCheckpoint
            read them right after validation, when a background run is not finished yet).
        prefix: the callback's metric prefix.
    """
    if not enabled:
        return "async_analysis=False"
    if on_flag != "warn":
        return f"on_flag={on_flag!r} acts at the validation that raises a flag"
    if world_size > 1:
        return f"{world_size} processes: every rank decides at the same step"
    name = type(precision_plugin).__name__ if precision_plugin is not None else "Precision"
    if name not in THREAD_SAFE_PRECISION:
        return f"the {name} plugin sets the default dtype for the whole process during a forward"
    if compiled:
        return "a torch.compile'd LightningModule"
    watched = sorted(m for m in monitored if m.startswith(prefix + "/"))
    if watched:
        return f"{', '.join(watched)} is monitored by another callback right after validation"
    return None
