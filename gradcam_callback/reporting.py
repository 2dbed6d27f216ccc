"""What a run shows: overlay grids, probe tables, flag text and the evolution filmstrip.

:class:`Reporter` turns one run's maps, predictions and per-probe metrics into artefacts and
hands them to a :class:`~gradcam_callback.sinks.SinkGroup`. Rendering, PNG/GIF encoding and the
writes run **off the training thread**, on one worker thread fed by a bounded queue (a full queue
makes the training thread wait: nothing is dropped). :meth:`Reporter.flush` waits until every
queued run is written; the callback calls it at fit end and on an exception, so no run's image is
lost when the fit ends right after it (a checkpoint does not wait for the media: they are not in
its state). A fault in the worker
(a rendering or writing error) is kept and given to the training thread as one warning at the next
:meth:`~Reporter.submit` or :meth:`~Reporter.flush`: it never crashes training.

The inputs of a job are CPU copies taken on the training thread (:class:`RunMedia`), so the
worker never touches the model's tensors. No Lightning import.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .engine import normalize_maps
from .render import (
    IMAGE_FORMATS,
    check_image_format,
    denormalize,
    filmstrip,
    gif_frame,
    grid_rows,
    pick_columns,
    probe_panels,
    tile,
    write_gif,
    write_image,
)
from .sinks import SinkGroup, markdown_table
from .threads import quiet_thread

__all__ = ["Reporter", "RunMedia", "flag_report", "flag_warning", "run_media", "shown_probes"]


@dataclass
class RunMedia:
    """One run's inputs for its artefacts (CPU tensors and plain values).

    Attributes:
        step: the logging step.
        images: float ``[M, C, H, W]``, the probes drawn in the grid (see :func:`shown_probes`).
        maps: float ``[M, h, w]``, their raw maps (any resolution; min-max scaled for display).
        shown: indices of the drawn probes in the probe set.
        labels, preds, targets: one entry per probe (``None`` where unknown).
        confs: target-class confidence per probe (``NaN`` where unknown).
        per_probe: metric name -> one value per probe.
        images_sent: the overlay grid was queued already (:meth:`Reporter.submit_images`, at
            the run, before its analysis): :meth:`Reporter.submit` writes the tables only.
    """

    step: int
    images: Tensor | None
    maps: Tensor | None
    shown: list[int]
    labels: list[Any]
    preds: list[Any]
    targets: list[Any]
    confs: list[float]
    per_probe: dict[str, list[float]] = field(default_factory=dict)
    images_sent: bool = False


def shown_probes(labels: Tensor | None, n: int, limit: int) -> list[int]:
    """Probes drawn in the overlay grid: all when ``n <= limit``, else ``limit`` of them taken
    round-robin across classes (in probe order), so that every class is shown."""
    if n <= limit:
        return list(range(n))
    if labels is None:
        return list(range(limit))
    queues: dict[int, list[int]] = {}
    for i, c in enumerate(labels.tolist()):
        queues.setdefault(int(c), []).append(i)
    order: list[int] = []
    while len(order) < limit:
        for q in queues.values():
            if q and len(order) < limit:
                order.append(q.pop(0))
    return sorted(order)


def run_media(
    step: int,
    probes: Any,
    images: Tensor,
    maps: Tensor,
    logits: Tensor | None,
    targets: Tensor | None,
    per_probe: dict[str, Tensor],
    max_images: int,
    *,
    multilabel: bool = False,
) -> RunMedia:
    """CPU copies of what a run's artefacts show, taken on the training thread.

    Args:
        step: the logging step.
        probes: the :class:`~gradcam_callback.ProbeSet` (for the labels).
        images: ``[N, C, H, W]`` probe images; maps: ``[N, h, w]`` raw maps.
        logits: ``[N, K]`` outputs (softmax confidence and prediction), or ``None``.
        targets: long ``[N]`` explained classes, or ``None``.
        per_probe: metric name -> ``[N]`` values (the per-probe table).
        max_images: probes drawn in the grid at most (``0``: no images).
        multilabel: sigmoid outputs: confidence is the target's sigmoid, and the prediction is
            1 where the explained label is predicted present.
    """
    n = images.shape[0]
    shown = shown_probes(probes.labels, n, max_images) if max_images else []
    conf = pred = None
    if logits is not None and targets is not None and multilabel:
        z = logits.float().gather(1, targets[:, None])[:, 0]
        conf, pred = z.sigmoid().tolist(), (z > 0).long().tolist()
    elif logits is not None and targets is not None:
        conf = logits.softmax(1).gather(1, targets[:, None])[:, 0].tolist()
        pred = logits.argmax(1).tolist()
    return RunMedia(
        step=step,
        images=images[shown].cpu() if shown else None,
        maps=maps[shown].float().cpu() if shown else None,
        shown=shown,
        labels=probes.labels.tolist() if probes.labels is not None else [None] * n,
        preds=pred or [None] * n,
        targets=targets.tolist() if targets is not None else [None] * n,
        confs=conf or [math.nan] * n,
        per_probe={k: v.tolist() for k, v in per_probe.items()},
    )


def flag_warning(flag: Any, prefix: str) -> str:
    """The rank-zero warning of a new flag: kind, when, the message and where to look."""
    return (
        f"GradCAMCallback [{flag.kind}] at epoch {flag.epoch}, step {flag.global_step}: "
        f"{flag.message} (see '{prefix}/overlays' and '{prefix}/flags' in TensorBoard / W&B / "
        "MLflow)"
    )


def flag_report(flags: Sequence[Any]) -> str:
    """The ``flags`` text entry of a run: one markdown bullet per flag, new or persisting."""
    lines = []
    for flag in flags:
        state = "persists" if flag.persistent else "NEW"
        lines.append(f"- **{flag.kind}** ({state}): {flag.message}")
    return "\n".join(lines)


def _thumbnail(images: Tensor, size: int = 96) -> Tensor:
    """Downscale uint8 ``[N, 3, H, W]`` so that the longer side is at most ``size``."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    if scale >= 1:
        return images
    out = F.interpolate(
        images.float(), scale_factor=scale, mode="bilinear", align_corners=False, antialias=True
    )
    return out.round().clamp(0, 255).to(torch.uint8)


def _frame(thumbs: Tensor, padding: int = 2) -> Tensor:
    """One GIF frame: the ``[N, 3, h, w]`` overlays of a run tiled in a near-square grid."""
    n = thumbs.shape[0]
    cols = max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    pad = thumbs.new_zeros((rows * cols - n, *thumbs.shape[1:]))
    cells = torch.cat([thumbs, pad]).view(rows, cols, *thumbs.shape[1:])
    return tile(cells, padding=padding)


class Reporter:
    """Renders and writes a run's artefacts on a worker thread (see the module docstring).

    Args:
        prefix: first component of every tag (``"gradcam"``).
        log_images: draw and log the overlay grid (tables and text are always written).
        colormap, alpha: overlay colour map and heatmap opacity.
        mean, std: the inputs' normalisation, to show them in true colour (``None``: inferred).
        max_images: probes drawn in the grid at most (spread over classes).
        max_filmstrip_runs: columns of the filmstrip at most (runs are sub-sampled evenly).
        background: write on a worker thread (``False``: on the calling thread, for debugging).
        queue_size: runs waiting at most before :meth:`submit` blocks.
        image_format: the filmstrip file's format, ``"png"`` or ``"jpeg"`` (the sinks encode
            what they log in their own ``image_format``).
    """

    def __init__(
        self,
        *,
        prefix: str = "gradcam",
        log_images: bool = True,
        colormap: str = "jet",
        alpha: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        max_images: int = 32,
        max_filmstrip_runs: int = 24,
        background: bool = True,
        queue_size: int = 4,
        image_format: str = "png",
    ) -> None:
        self.prefix = prefix
        self.log_images = log_images
        self.colormap = colormap
        self.alpha = alpha
        self.mean = None if mean is None else list(mean)
        self.std = None if std is None else list(std)
        self.max_images = max_images
        self.max_filmstrip_runs = max_filmstrip_runs
        self.background = background
        self.queue_size = queue_size
        self.image_format = check_image_format(image_format)
        self.thumbs: list[Tensor] = []
        self.thumb_steps: list[int] = []
        self.frames: list[Any] = []  # the GIF frame of each thumbnail run (PIL images)
        self._queue: queue.Queue[Callable[[], None] | None] | None = None
        self._worker: threading.Thread | None = None
        self._errors: list[str] = []
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ set-up check
    def check(self, images: Tensor) -> None:
        """Render one probe as the runs will, so that a colour map, a ``mean``/``std`` or a
        channel count the overlay cannot show fails at set-up, not after the first steps.

        Raises:
            ValueError: the overlay of ``images[:1]`` cannot be drawn (the message says why).
        """
        if not self.log_images:
            return
        images01 = denormalize(images[:1].float(), self.mean, self.std)
        probe_panels(
            images01, torch.zeros(1, *images.shape[-2:]), alpha=self.alpha, colormap=self.colormap
        )

    # ------------------------------------------------------------------ the queue
    def _run(self, job: Callable[[], None], what: str) -> None:
        try:
            job()
        except Exception as err:  # kept, then warned about on the training thread
            with self._lock:
                self._errors.append(
                    f"could not render or write the {what} (its metrics and "
                    f"flags are kept; training goes on): {err!r}"
                )

    def _loop(self) -> None:
        assert self._queue is not None
        while True:
            job = self._queue.get()
            try:
                if job is None:
                    return
                job()
            finally:
                self._queue.task_done()

    def _enqueue(self, job: Callable[[], None], what: str) -> None:
        if not self.background:
            self._run(job, what)
            return
        if self._worker is None or not self._worker.is_alive():
            self._queue = queue.Queue(maxsize=self.queue_size)
            self._worker = quiet_thread(self._loop, "gradcam-reporter")  # torch on one core
        assert self._queue is not None
        self._queue.put(lambda: self._run(job, what))

    def note(self, message: str) -> None:
        """Keep a fault met on the worker thread for the training thread to warn about."""
        with self._lock:
            self._errors.append(message)

    def pop_errors(self) -> list[str]:
        """Faults of the worker since the last call (each a one-line description)."""
        with self._lock:
            out, self._errors = self._errors, []
        return out

    def flush(self) -> list[str]:
        """Wait until every queued job is written; returns the faults met meanwhile."""
        if self._queue is not None and self._worker is not None and self._worker.is_alive():
            self._queue.join()
        return self.pop_errors()

    def close(self) -> list[str]:
        """Flush and stop the worker thread (a later :meth:`submit` starts a new one)."""
        errors = self.flush()
        if self._queue is not None and self._worker is not None and self._worker.is_alive():
            self._queue.put(None)
            self._worker.join(timeout=30)
        self._worker = self._queue = None
        return errors

    # ------------------------------------------------------------------ a run
    def submit(
        self,
        sinks: SinkGroup,
        media: RunMedia,
        flags: Sequence[Any] = (),
        scalars: Callable[[], None] | None = None,
    ) -> list[str]:
        """Queue a run's overlays, tables and flag text (after ``scalars``, a job that writes
        the run's scalars from the worker); returns earlier faults (to warn about)."""
        errors = self.pop_errors()

        def job() -> None:
            try:
                if scalars is not None:
                    scalars()
            finally:
                self._write_run(sinks, media, list(flags))

        self._enqueue(job, f"run at step {media.step}")
        return errors

    def submit_images(self, sinks: SinkGroup, media: RunMedia) -> list[str]:
        """Queue a run's overlay grid now, while its analysis runs (the images need only the
        maps and the predictions), and mark ``media`` so that :meth:`submit` skips them; returns
        earlier faults (to warn about)."""
        errors = self.pop_errors()
        if self.log_images and media.images is not None and media.maps is not None:
            media.images_sent = True
            self._enqueue(lambda: self._write_images(sinks, media), f"images of step {media.step}")
        return errors

    def _write_run(self, sinks: SinkGroup, media: RunMedia, flags: list[Any]) -> None:
        step, tag = media.step, self.prefix
        try:
            drawn = media.images is not None and media.maps is not None
            if self.log_images and drawn and not media.images_sent:
                self._write_images(sinks, media)
        finally:  # the tables and the flags are written even when the images fail
            n = len(media.labels)
            rows = [
                [i, media.labels[i], media.targets[i], media.preds[i], media.confs[i]]
                for i in range(n)
            ]
            sinks.log_text(
                f"{tag}/probes",
                markdown_table(["probe", "label", "target", "prediction", "confidence"], rows),
                step,
            )
            names = list(media.per_probe)
            table = [
                [i, media.labels[i], media.preds[i], media.confs[i]]
                + [media.per_probe[k][i] for k in names]
                for i in range(n)
            ]
            sinks.log_table(
                f"{tag}/per_probe",
                ["probe", "label", "prediction", "confidence", *names],
                table,
                step,
            )
            if flags:
                sinks.log_text(f"{tag}/flags", flag_report(flags), step)

    def _write_images(self, sinks: SinkGroup, media: RunMedia) -> None:
        assert media.images is not None and media.maps is not None
        images01 = denormalize(media.images.float(), self.mean, self.std)
        # The panels are rendered once: the grid, the per-probe strips and the filmstrip's
        # overlays are all views or layouts of them.
        panels = probe_panels(
            images01, normalize_maps(media.maps.float()), alpha=self.alpha, colormap=self.colormap
        )
        grid = tile(panels)
        rows = grid_rows(grid, len(media.shown))
        captions = [
            f"probe {i} | label {media.labels[i]} | pred {media.preds[i]} ({media.confs[i]:.2f})"
            for i in media.shown
        ]
        sinks.log_probe_images(f"{self.prefix}/overlays", grid, rows, captions, media.step)
        thumbs = _thumbnail(panels[:, 2]).cpu()
        self.thumbs.append(thumbs)
        self.thumb_steps.append(media.step)
        self.frames.append(gif_frame(_frame(thumbs)))  # quantised now, saved at fit end

    def write_flags(self, sinks: SinkGroup, flags: Sequence[Any], step: int) -> None:
        """Queue a ``flags`` text entry outside a run (e.g. the sanity check's flag)."""
        if flags:
            text = flag_report(flags)
            self._enqueue(
                lambda: sinks.log_text(f"{self.prefix}/flags", text, step), f"flags of step {step}"
            )

    # ------------------------------------------------------------------ fit end
    def write_filmstrip(self, sinks: SinkGroup, step: int, out_dir: Path | None = None) -> None:
        """After :meth:`flush`: the probe-by-run filmstrip (``filmstrip.png`` or ``.jpg``, as
        :attr:`image_format`) and the evolution GIF, saved under ``out_dir`` (default
        ``sinks.log_dir / prefix``) and logged to every sink."""
        if not self.thumbs:
            return
        out_dir = out_dir or sinks.log_dir / self.prefix
        strip = filmstrip(self.thumbs, max_columns=self.max_filmstrip_runs)
        suffix = IMAGE_FORMATS[self.image_format]
        write_image(strip, out_dir / f"filmstrip{suffix}", self.image_format)
        cols = pick_columns(len(self.thumbs), self.max_filmstrip_runs)
        shown = [self.thumb_steps[i] for i in cols]
        caption = f"a row per probe, a column per run; runs at steps {shown}"
        sinks.log_image(f"{self.prefix}/filmstrip", strip, step, caption=caption)
        made = len(self.frames) == len(self.thumbs)  # else thumbnails given from outside a run
        frames = self.frames if made else [gif_frame(_frame(t)) for t in self.thumbs]
        gif = write_gif(frames, out_dir / "evolution.gif")
        sinks.log_gif(f"{self.prefix}/evolution", gif, step)

    def reset(self) -> None:
        """Forget the filmstrip's thumbnails (a new fit)."""
        self.thumbs, self.thumb_steps, self.frames = [], [], []
