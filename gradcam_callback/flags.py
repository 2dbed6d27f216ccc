"""The alarm record: :class:`Flag`, and :class:`ShortcutDetected` that carries flags out of a fit.

Plain data, no tensors: a flag pickles, compares, and goes into a checkpoint as ``to_dict()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from .rules import FlagKind

__all__ = ["FLAG_KINDS", "Active", "Flag", "ShortcutDetected", "mark_persistent"]

#: Every flag kind, as plain strings (``FlagKind`` members compare equal to them).
FLAG_KINDS: tuple[str, ...] = tuple(k.value for k in FlagKind)


@dataclass(frozen=True)
class Flag:
    """One alarm.

    Attributes:
        kind: a :class:`~gradcam_callback.rules.FlagKind` (compares equal to its name:
            ``"artifact"``, ``"background"``, ``"drift"``, ``"unfaithful"``, ``"few_probes"``).
        epoch, global_step: when the analysis ran.
        probe: the probe index when one probe is at fault, ``None`` for several.
        value: the measured value that crossed ``threshold`` (see ``metric``), for the class
            that shows it most.
        threshold: the threshold it crossed.
        message: what, which classes and probes, how much, what to do.
        persistent: ``True`` when the same kind also fired for these classes at the previous run.
        since_epoch, since_step: when this streak began (this run when new).
        probes: indices of the probes that carry the finding (most affected first).
        metric: the metric name (relative, e.g. ``"attention/artifact_enrichment"``) whose plot
            shows it; the callback prefixes it (``gradcam/...``).
        classes: the explained classes the flag is about (empty for set-level flags).
    """

    kind: FlagKind
    epoch: int
    global_step: int
    probe: int | None
    value: float
    threshold: float
    message: str
    persistent: bool = False
    since_epoch: int | None = None
    since_step: int | None = None
    probes: tuple[int, ...] = ()
    metric: str = ""
    classes: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.kind, FlagKind):
            try:
                object.__setattr__(self, "kind", FlagKind(str(self.kind)))
            except ValueError:
                raise ValueError(
                    f"unknown flag kind {self.kind!r}; one of {', '.join(FLAG_KINDS)}"
                ) from None
        object.__setattr__(self, "probes", tuple(int(p) for p in self.probes))
        object.__setattr__(self, "classes", tuple(int(c) for c in self.classes))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (``kind`` as a ``str``): safe for ``torch.load(weights_only=True)``."""
        out = asdict(self)
        out["kind"] = str(self.kind)
        return out


class ShortcutDetected(RuntimeError):
    """Raised (with ``on_flag="raise"``) when a shortcut-learning flag fires.

    Attributes:
        flags: the flags that triggered it.
    """

    def __init__(self, flags: Sequence[Flag], message: str | None = None) -> None:
        self.flags: list[Flag] = list(flags)
        if message is None:
            message = "shortcut learning detected: " + " | ".join(f.message for f in self.flags)
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across processes
        return (type(self), (self.flags, str(self)))


#: kind -> (since_epoch, since_step, classes) of the flags that fired at the previous run
Active = dict[str, tuple[int, int, tuple[int, ...]]]


def mark_persistent(
    flags: Sequence[Flag], active: Active, epoch: int, step: int
) -> tuple[list[Flag], Active]:
    """Mark flags whose kind (for the same classes) also fired at the previous run.

    Returns the flags (``persistent``, ``since_epoch`` / ``since_step`` set) and the new
    ``active`` record of this run.
    """
    out: list[Flag] = []
    now: Active = {}
    for f in flags:
        prev = active.get(str(f.kind))
        if prev is not None and set(f.classes) <= set(prev[2]):
            since = (prev[0], prev[1])
            f = replace(f, persistent=True, since_epoch=since[0], since_step=since[1])
        else:
            since = (epoch, step)
            f = replace(f, since_epoch=epoch, since_step=step)
        now[str(f.kind)] = (since[0], since[1], f.classes)
        out.append(f)
    return out, now
