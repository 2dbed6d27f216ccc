"""Destinations for rendered Grad-CAM artefacts: TensorBoard, Weights & Biases, MLflow, files.

A *sink* is one destination, built from one Lightning logger by :func:`make_sinks`. Loggers are
recognised by duck typing on their class hierarchy (class name + a ``lightning`` /
``pytorch_lightning`` / ``lightning_fabric`` module), so loggers from both the
``pytorch_lightning`` and the ``lightning.pytorch`` namespace, and subclasses of them, work.
:class:`SinkGroup` fans every call out to all sinks and turns a sink's failure into one warning
instead of a crash.

Images arrive as uint8 Tensors ``[3, H, W]`` (RGB, any device); tags arrive fully prefixed
(``"gradcam/overlays"``) and are used as they are. The sinks that encode images themselves
(TensorBoard, files, and W&B through ``wandb.Image``) write them in their ``image_format``:
``"png"`` (lossless) or ``"jpeg"`` (:func:`~.render.encode_image`: about 15x faster to encode;
the callback's default, since a run's overlay grid is encoded during training). MLflow encodes
its images as PNG. Sinks are only called on global rank 0.
``wandb`` is imported lazily (optional extra), ``mlflow`` never (its client comes from the
logger); this module does not import Lightning.
"""

from __future__ import annotations

import html
import logging
import re
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = [
    "FileSink",
    "MLflowSink",
    "Sink",
    "SinkGroup",
    "SinkWarning",
    "TensorBoardSink",
    "WandbSink",
    "fast_tensorboard_crc",
    "logger_dir",
    "make_sinks",
    "markdown_table",
    "sink_for_logger",
    "thread_safe_logger",
]

log = logging.getLogger(__name__)

_LIGHTNING_ROOTS = ("lightning", "pytorch_lightning", "lightning_fabric")


class SinkWarning(UserWarning):
    """A sink failed; the artefact was not written there (training goes on)."""


@runtime_checkable
class Sink(Protocol):
    """One destination for Grad-CAM artefacts. ``step`` is the trainer's global step."""

    name: str

    def log_probe_images(
        self, tag: str, grid: Tensor, rows: Sequence[Tensor], captions: Sequence[str], step: int
    ) -> None:
        """grid: uint8 ``[3, H, W]``; rows: per-probe uint8 ``[3, h, w]`` (a list, or the stacked
        ``[N, 3, h, w]`` output of :func:`gradcam_callback.render.probe_rows`); captions: one per
        row, or empty."""

    def log_image(self, tag: str, image: Tensor, step: int, caption: str | None = None) -> None:
        """image: uint8 ``[3, H, W]``."""

    def log_text(self, tag: str, markdown: str, step: int) -> None:
        """A markdown document."""

    def log_table(
        self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int
    ) -> None:
        """A table: column names and rows of plain values (numbers, strings, 0-d tensors)."""

    def log_gif(self, tag: str, path: Path, step: int) -> None:
        """An already written GIF file (:func:`gradcam_callback.render.write_gif`)."""


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _is_logger(logger: object, class_name: str) -> bool:
    """True if a Lightning class named ``class_name`` is in ``type(logger).__mro__``."""
    return any(
        cls.__name__ == class_name and cls.__module__.split(".")[0] in _LIGHTNING_ROOTS
        for cls in type(logger).__mro__
    )


#: Loggers whose ``log_metrics`` may be called from the reporter's worker thread while the
#: training thread logs too: their writes go through a thread-safe queue or client (TensorBoard's
#: event writer, the W&B run, the MLflow client). Others (``CSVLogger`` buffers rows in a list
#: that ``save`` swaps out) are only called from the training thread.
THREAD_SAFE_LOGGERS = ("TensorBoardLogger", "WandbLogger", "MLFlowLogger")


def thread_safe_logger(logger: object) -> bool:
    """``logger`` is one of :data:`THREAD_SAFE_LOGGERS` (or a subclass)."""
    return any(_is_logger(logger, name) for name in THREAD_SAFE_LOGGERS)


def _describe(logger: object | None) -> str:
    if logger is None:
        return "no logger"
    cls = type(logger)
    return f"{cls.__module__}.{cls.__qualname__}"


def _safe_attr(obj: object, name: str) -> Any:
    """``getattr`` that treats a raising property as missing."""
    try:
        return getattr(obj, name, None)
    except Exception:
        return None


def logger_dir(logger: object) -> Path | None:
    """Where a logger keeps its files: ``log_dir`` if it has one, else ``save_dir/name/version``.

    Mirrors Lightning's choice for checkpoints (for W&B this touches ``logger.version``, which
    starts the run). Returns None when the logger has no directory.
    """
    log_dir = _safe_attr(logger, "log_dir")
    if log_dir:
        return Path(log_dir)
    save_dir = _safe_attr(logger, "save_dir")
    if not save_dir:
        return None
    path = Path(save_dir)
    name, version = _safe_attr(logger, "name"), _safe_attr(logger, "version")
    if name:
        path = path / str(name)
    if version is not None and version != "":
        path = path / (version if isinstance(version, str) else f"version_{version}")
    return path


def _hwc(image: Tensor) -> Any:
    """uint8 ``[3, H, W]`` Tensor -> contiguous uint8 numpy ``[H, W, 3]`` on the host."""
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(
            f"expected a uint8 [3, H, W] image, got {image.dtype} {tuple(image.shape)}"
        )
    return image.detach().cpu().permute(1, 2, 0).contiguous().numpy()


def _chw(image: Tensor) -> Any:
    """uint8 ``[3, H, W]`` Tensor -> uint8 numpy ``[3, H, W]`` on the host."""
    return _hwc(image).transpose(2, 0, 1)


def _plain(value: object) -> object:
    """Tensors / numpy scalars -> Python scalars; everything else as is."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    return value


def _cell(value: object) -> str:
    value = _plain(value)
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\r", "").replace("\n", "<br>")


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Render a GitHub-flavoured markdown table (floats with 4 significant digits).

    Returns:
        The table, one line per row, header and separator first.
    """
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _captions_markdown(captions: Sequence[str]) -> str:
    return "\n".join(f"{i}. {_cell(c)}" for i, c in enumerate(captions))


def _check_captions(rows: Sequence[Tensor], captions: Sequence[str]) -> None:
    if len(captions) > 0 and len(captions) != len(rows):
        raise ValueError(f"{len(captions)} captions for {len(rows)} rows")


# --------------------------------------------------------------------------------------------
# Sinks
# --------------------------------------------------------------------------------------------


def fast_tensorboard_crc() -> bool:
    """Give TensorBoard's event-file writer a CRC-32C in C (``google-crc32c``).

    TensorBoard's ``RecordWriter`` checksums every record with a pure-Python CRC-32C: about
    0.2 ms per KB, on its writer thread, holding the GIL. An overlay grid of 16 probes at 224 px
    (a few MB of PNG) then stalls the training thread for half a second. The replacement computes
    the same masked checksums (checked on a sample before it is put in place), so the event files
    are byte for byte the same; it is process-wide (every ``SummaryWriter`` gains) and installed
    once. Returns whether it is in place (``False`` without a C implementation).
    """
    try:
        import google_crc32c
        from tensorboard.summary.writer import record_writer
    except ImportError:
        return False
    current = record_writer.masked_crc32c
    if getattr(current, "gradcam_fast", False):
        return True
    if getattr(google_crc32c, "implementation", "") != "c":
        return False  # its pure-Python fallback is no faster
    mask = 0xFFFFFFFF

    def masked_crc32c(data: bytes) -> int:
        x = google_crc32c.value(bytes(data)) & mask
        return (((x >> 15) | ((x << 17) & mask)) + 0xA282EAD8) & mask

    sample = bytes(range(256)) * 5 + b"gradcam-callback"
    if masked_crc32c(sample) != current(sample) or masked_crc32c(b"") != current(b""):
        return False
    masked_crc32c.gradcam_fast = True  # type: ignore[attr-defined]
    record_writer.masked_crc32c = masked_crc32c
    return True


class TensorBoardSink:
    """Writes to a ``TensorBoardLogger``'s ``SummaryWriter`` (either Lightning namespace).

    Probe images: the grid only (an image summary of its PNG or JPEG bytes,
    :func:`~.render.encode_image`; ``add_image`` would store a PNG) plus the row captions as
    text under ``f"{tag}/captions"``; text
    via ``add_text``; tables as markdown text; GIFs as an image summary holding the GIF bytes,
    which the image tab plays (no moviepy needed). Creating one installs
    :func:`fast_tensorboard_crc`.
    """

    name = "tensorboard"

    def __init__(self, logger: Any, image_format: str = "png") -> None:
        from .render import check_image_format

        self.logger = logger
        self.image_format = check_image_format(image_format)
        fast_tensorboard_crc()

    @property
    def log_dir(self) -> Path | None:
        """The logger's ``log_dir`` (where its event files go)."""
        return logger_dir(self.logger)

    @property
    def _writer(self) -> Any:
        return self.logger.experiment

    def log_probe_images(
        self, tag: str, grid: Tensor, rows: Sequence[Tensor], captions: Sequence[str], step: int
    ) -> None:
        _check_captions(rows, captions)
        self._encoded(tag, grid, step)
        if captions:
            self._writer.add_text(f"{tag}/captions", _captions_markdown(captions), global_step=step)

    def _encoded(self, tag: str, image: Tensor, step: int) -> None:
        """An image summary of the bytes :func:`~.render.encode_image` gives in the sink's
        format (TensorBoard's image tab shows PNG and JPEG alike)."""
        from tensorboard.compat.proto.summary_pb2 import Summary

        from .render import encode_image

        _chw(image)  # validates
        channels, height, width = image.shape
        data = encode_image(image, self.image_format)
        summary = Summary(
            value=[
                Summary.Value(
                    tag=tag,
                    image=Summary.Image(
                        height=int(height), width=int(width), colorspace=int(channels),
                        encoded_image_string=data,
                    ),
                )
            ]
        )  # fmt: skip
        self._writer._get_file_writer().add_summary(summary, step)

    def log_image(self, tag: str, image: Tensor, step: int, caption: str | None = None) -> None:
        self._encoded(tag, image, step)
        if caption:
            self._writer.add_text(f"{tag}/caption", caption, global_step=step)

    def log_text(self, tag: str, markdown: str, step: int) -> None:
        self._writer.add_text(tag, markdown, global_step=step)

    def log_table(
        self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int
    ) -> None:
        self._writer.add_text(tag, markdown_table(columns, rows), global_step=step)

    def log_gif(self, tag: str, path: Path, step: int) -> None:
        """The GIF itself as an image summary: TensorBoard's image tab plays it (an ``<img>``)."""
        from PIL import Image
        from tensorboard.compat.proto.summary_pb2 import Summary

        data = Path(path).read_bytes()
        with Image.open(path) as gif:
            width, height = gif.size
        image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=data)
        summary = Summary(value=[Summary.Value(tag=tag, image=image)])
        self._writer._get_file_writer().add_summary(summary, step)

    def flush(self) -> None:
        """Flush the event file so the artefacts are visible right away."""
        self._writer.flush()


class WandbSink:
    """Writes to a ``WandbLogger`` (either Lightning namespace); ``wandb`` is imported lazily.

    Probe images: one W&B image per probe row (uint8 HWC, with its caption) under ``tag`` and the
    whole grid under ``f"{tag}_grid"``; text as ``wandb.Html`` (the markdown in a ``<pre>``
    block); tables as ``wandb.Table`` (mixed column types allowed); GIFs as ``wandb.Video`` from
    the file (no moviepy needed). Images are saved by ``wandb.Image`` as ``.png`` or, with
    ``image_format="jpeg"``, ``.jpg``.
    Steps go through the logger, i.e. as ``trainer/global_step`` like Lightning's own metrics.
    """

    name = "wandb"

    def __init__(self, logger: Any, image_format: str = "png") -> None:
        from .render import check_image_format

        self.logger = logger
        self.image_format = check_image_format(image_format)

    def _kinds(self, n: int) -> dict[str, list[str]]:
        """``wandb.Image``'s ``file_type`` for ``n`` images (the logger's per-image kwargs)."""
        return {"file_type": ["jpg"] * n} if self.image_format == "jpeg" else {}

    @property
    def log_dir(self) -> Path | None:
        """``save_dir/project/run_id``, as Lightning uses for checkpoints."""
        return logger_dir(self.logger)

    def log_probe_images(
        self, tag: str, grid: Tensor, rows: Sequence[Tensor], captions: Sequence[str], step: int
    ) -> None:
        _check_captions(rows, captions)
        if len(rows) > 0:
            extra = {"caption": list(captions)} if captions else {}
            extra.update(self._kinds(len(rows)))
            self.logger.log_image(key=tag, images=[_hwc(r) for r in rows], step=step, **extra)
        self.logger.log_image(key=f"{tag}_grid", images=[_hwc(grid)], step=step, **self._kinds(1))

    def log_image(self, tag: str, image: Tensor, step: int, caption: str | None = None) -> None:
        extra = {"caption": [caption]} if caption else {}
        self.logger.log_image(key=tag, images=[_hwc(image)], step=step, **extra, **self._kinds(1))

    def log_text(self, tag: str, markdown: str, step: int) -> None:
        import wandb

        page = wandb.Html(f"<pre>{html.escape(markdown)}</pre>", inject=False)
        self.logger.log_metrics({tag: page}, step=step)

    def log_table(
        self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int
    ) -> None:
        import wandb

        data = [[_plain(v) for v in row] for row in rows]
        table = wandb.Table(columns=list(columns), data=data, allow_mixed_types=True)
        self.logger.log_metrics({tag: table}, step=step)

    def log_gif(self, tag: str, path: Path, step: int) -> None:
        import wandb

        self.logger.log_metrics({tag: wandb.Video(str(path))}, step=step)


_UNSAFE = re.compile(r'[\\/:*?"<>|\s]+')
_UNSAFE_PATH = re.compile(r'[\\:*?"<>|\s]+')


def _artifact_dir(tag: str) -> str:
    """A tag as a relative artifact path: ``/`` kept, unsafe characters and ``..`` removed."""
    parts = [_UNSAFE_PATH.sub("_", p).strip("_") for p in tag.split("/")]
    return "/".join(p for p in parts if p and p not in (".", "..")) or "untitled"


class MLflowSink:
    """Writes to an ``MLFlowLogger``'s run (either Lightning namespace), through its client.

    ``logger.experiment`` is an ``mlflow.MlflowClient`` and every call names
    ``run_id=logger.run_id``. Layout of the run's artifacts (``<tag>`` as given, e.g.
    ``gradcam/overlays``; ``<step>`` zero-padded to 8 digits):

    * probe images and images: the grid as a step-indexed image (``log_image(key=tag,
      step=step)``: the run page's image chart with its step slider; ``images/`` in the
      artifacts). Clients without ``key`` (MLflow < 2.16) get ``<tag>/step_<step>.png``.
      Row captions and a caption go to ``<tag>/step_<step>.md``.
    * text (the flags, the probe list): ``<tag>/step_<step>.md``.
    * tables (the per-probe table): one ``<tag>.json`` table for the whole run with a ``step``
      column (``log_table`` appends, so MLflow's table views compare runs); without pandas
      (which ``log_table`` needs) ``<tag>/step_<step>.json`` in the same ``columns``/``data``
      layout via ``log_dict``.
    * GIFs: the file under ``<tag>/`` (``log_artifact``).
    """

    name = "mlflow"

    def __init__(self, logger: Any) -> None:
        self.logger = logger

    @property
    def log_dir(self) -> Path | None:
        """The logger's local ``save_dir`` (``file:`` stores), else None (a database store)."""
        return logger_dir(self.logger)

    @property
    def _client(self) -> Any:
        return self.logger.experiment

    @property
    def _run_id(self) -> str:
        return self.logger.run_id

    @staticmethod
    def _file(tag: str, step: int, suffix: str) -> str:
        return f"{_artifact_dir(tag)}/step_{int(step):08d}{suffix}"

    def _image(self, tag: str, image: Tensor, step: int) -> None:
        import inspect

        client, array = self._client, _hwc(image)
        if "key" in inspect.signature(client.log_image).parameters:
            client.log_image(self._run_id, array, key=_artifact_dir(tag), step=int(step))
        else:  # MLflow < 2.16: no step-indexed images
            client.log_image(self._run_id, array, artifact_file=self._file(tag, step, ".png"))

    def log_probe_images(
        self, tag: str, grid: Tensor, rows: Sequence[Tensor], captions: Sequence[str], step: int
    ) -> None:
        _check_captions(rows, captions)
        self._image(tag, grid, step)
        if captions:
            text = _captions_markdown(captions) + "\n"
            self._client.log_text(self._run_id, text, self._file(tag, step, ".md"))

    def log_image(self, tag: str, image: Tensor, step: int, caption: str | None = None) -> None:
        self._image(tag, image, step)
        if caption:
            self._client.log_text(self._run_id, caption + "\n", self._file(tag, step, ".md"))

    def log_text(self, tag: str, markdown: str, step: int) -> None:
        text = markdown if markdown.endswith("\n") else markdown + "\n"
        self._client.log_text(self._run_id, text, self._file(tag, step, ".md"))

    def log_table(
        self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int
    ) -> None:
        names = ["step", *(str(c) for c in columns)]
        data = [[int(step), *(_plain(v) for v in row)] for row in rows]
        try:
            import pandas  # noqa: F401  (MlflowClient.log_table needs it)
        except ImportError:
            table = {"columns": names, "data": data}
            self._client.log_dict(self._run_id, table, self._file(tag, step, ".json"))
            return
        by_column = {c: [r[k] for r in data] for k, c in enumerate(names)}
        self._client.log_table(
            self._run_id, data=by_column, artifact_file=f"{_artifact_dir(tag)}.json"
        )

    def log_gif(self, tag: str, path: Path, step: int) -> None:
        self._client.log_artifact(self._run_id, str(path), artifact_path=_artifact_dir(tag))


class FileSink:
    """Writes plain files (for ``CSVLogger``, any other logger, or no logger).

    Layout: ``<root>/gradcam/step=<step>/<tag with / replaced by _><ext>``:
    ``.png`` or ``.jpg`` (``image_format``) for images (probe images: the grid), ``.md`` for
    text, tables and captions, ``.gif`` for GIFs (copied). ``root`` is the logger's directory (:func:`logger_dir`) or the trainer's
    ``default_root_dir``.
    """

    name = "file"

    def __init__(self, root: str | Path, logger: Any = None, image_format: str = "png") -> None:
        from .render import check_image_format

        self.root = Path(root)
        self.logger = logger
        self.image_format = check_image_format(image_format)

    @property
    def log_dir(self) -> Path:
        """The root directory."""
        return self.root

    def path(self, tag: str, step: int, suffix: str) -> Path:
        """Where the artefact ``tag`` of ``step`` goes (parent directories are created)."""
        folder = self.root / "gradcam" / f"step={int(step)}"
        folder.mkdir(parents=True, exist_ok=True)
        return folder / f"{_UNSAFE.sub('_', tag).strip('_') or 'untitled'}{suffix}"

    def _write(self, tag: str, image: Tensor, step: int) -> Path:
        from .render import IMAGE_FORMATS, write_image

        _hwc(image)  # validates
        suffix = IMAGE_FORMATS[self.image_format]
        return write_image(image, self.path(tag, step, suffix), self.image_format)

    def log_probe_images(
        self, tag: str, grid: Tensor, rows: Sequence[Tensor], captions: Sequence[str], step: int
    ) -> None:
        _check_captions(rows, captions)
        self._write(tag, grid, step)
        if captions:
            self.path(tag, step, ".md").write_text(_captions_markdown(captions) + "\n")

    def log_image(self, tag: str, image: Tensor, step: int, caption: str | None = None) -> None:
        self._write(tag, image, step)
        if caption:
            self.path(tag, step, ".md").write_text(caption + "\n")

    def log_text(self, tag: str, markdown: str, step: int) -> None:
        self.path(tag, step, ".md").write_text(
            markdown if markdown.endswith("\n") else markdown + "\n"
        )

    def log_table(
        self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int
    ) -> None:
        self.path(tag, step, ".md").write_text(markdown_table(columns, rows) + "\n")

    def log_gif(self, tag: str, path: Path, step: int) -> None:
        target = self.path(tag, step, ".gif")
        if Path(path).resolve() != target.resolve():
            shutil.copyfile(path, target)


# --------------------------------------------------------------------------------------------
# Construction and fan-out
# --------------------------------------------------------------------------------------------


def sink_for_logger(logger: Any, default_dir: str | Path, image_format: str = "png") -> Sink:
    """The sink for one logger: TensorBoard, W&B, MLflow, or files under its directory /
    ``default_dir`` (CSV and any other logger), writing images as ``image_format``."""
    if _is_logger(logger, "TensorBoardLogger"):
        return TensorBoardSink(logger, image_format)
    if _is_logger(logger, "WandbLogger"):
        return WandbSink(logger, image_format)
    if _is_logger(logger, "MLFlowLogger"):
        return MLflowSink(logger)  # MLflow encodes its images (PNG) itself
    return FileSink(logger_dir(logger) or default_dir, logger=logger, image_format=image_format)


def make_sinks(trainer: Any, image_format: str = "png") -> list[Sink]:
    """One sink per ``trainer.loggers`` entry; no loggers -> a :class:`FileSink` under
    ``trainer.default_root_dir``. Images are written as ``image_format`` (``"png"`` or
    ``"jpeg"``; MLflow: PNG)."""
    default_dir = Path(trainer.default_root_dir)
    loggers = list(getattr(trainer, "loggers", None) or [])
    if not loggers:
        return [FileSink(default_dir, image_format=image_format)]
    return [sink_for_logger(lg, default_dir, image_format) for lg in loggers]


class SinkGroup:
    """Fan-out over sinks that never raises.

    A sink call that raises is recorded in :attr:`failures` and disables that call kind (e.g.
    ``log_gif``) for that sink; the first failure of each sink gives one :class:`SinkWarning`
    naming the logger and the error, later ones only a log record. Other sinks and call kinds
    go on.

    Args:
        sinks: the destinations, in order.
        log_dir: where the caller should write PNG/GIF artefacts; default: the first sink's
            directory that is known, else ``default_dir``, else the current directory.
        default_dir: fallback for ``log_dir`` (the trainer's ``default_root_dir``).
    """

    name = "group"

    def __init__(
        self,
        sinks: Sequence[Sink],
        log_dir: str | Path | None = None,
        default_dir: str | Path | None = None,
    ) -> None:
        self.sinks: list[Sink] = list(sinks)
        self._log_dir = Path(log_dir) if log_dir is not None else None
        self._default_dir = Path(default_dir) if default_dir is not None else None
        self._disabled: set[tuple[int, str]] = set()
        self._warned: set[int] = set()
        self.failures: list[tuple[str, str, str]] = []  # (sink description, method, error)

    @classmethod
    def from_trainer(cls, trainer: Any, image_format: str = "png") -> SinkGroup:
        """``SinkGroup(make_sinks(trainer, image_format), default_dir=trainer.default_root_dir)``."""
        return cls(make_sinks(trainer, image_format), default_dir=trainer.default_root_dir)

    @property
    def log_dir(self) -> Path:
        """Directory for PNG/GIF artefacts written by the caller (resolved once, then fixed)."""
        if self._log_dir is None:
            dirs = (_safe_attr(s, "log_dir") for s in self.sinks)
            found = next((Path(d) for d in dirs if d), None)
            self._log_dir = found or self._default_dir or Path.cwd()
        return self._log_dir

    def _call(self, method: str, *args: Any, **kwargs: Any) -> None:
        for index, sink in enumerate(self.sinks):
            if (index, method) in self._disabled or not hasattr(sink, method):
                continue
            try:
                getattr(sink, method)(*args, **kwargs)
            except Exception as err:
                self._fail(index, sink, method, err)

    def _fail(self, index: int, sink: Sink, method: str, err: Exception) -> None:
        self._disabled.add((index, method))
        who = f"{sink.name} sink ({_describe(getattr(sink, 'logger', None))})"
        self.failures.append((who, method, f"{type(err).__name__}: {err}"))
        message = f"gradcam: {who} failed in {method}: {type(err).__name__}: {err}"
        if index in self._warned:
            log.info("%s; %s is now skipped for this sink", message, method)
            return
        self._warned.add(index)
        warnings.warn(
            f"{message}. Skipping {method} for this sink from now on (training continues; "
            "further failures of this sink are only logged).",
            SinkWarning,
            stacklevel=4,
        )

    def log_probe_images(
        self, tag: str, grid: Tensor, rows: Sequence[Tensor], captions: Sequence[str], step: int
    ) -> None:
        self._call("log_probe_images", tag, grid, rows, captions, step)

    def log_image(self, tag: str, image: Tensor, step: int, caption: str | None = None) -> None:
        self._call("log_image", tag, image, step, caption=caption)

    def log_text(self, tag: str, markdown: str, step: int) -> None:
        self._call("log_text", tag, markdown, step)

    def log_table(
        self, tag: str, columns: Sequence[str], rows: Sequence[Sequence[object]], step: int
    ) -> None:
        self._call("log_table", tag, columns, rows, step)

    def log_gif(self, tag: str, path: Path, step: int) -> None:
        self._call("log_gif", tag, path, step)

    def flush(self) -> None:
        """Flush the sinks that buffer (TensorBoard)."""
        self._call("flush")
