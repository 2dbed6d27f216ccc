"""Tests for gradcam_callback.sinks with real loggers of both Lightning namespaces.

Every test reads back what was written: TensorBoard event files, the W&B offline run folder,
plain files.
"""

from __future__ import annotations

import importlib
import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from gradcam_callback import render as R
from gradcam_callback import sinks as S

NAMESPACES = ["pytorch_lightning", "lightning.pytorch"]


def _loggers(namespace: str):
    return importlib.import_module(f"{namespace}.loggers")


def _trainer(namespace: str, **kwargs):
    module = importlib.import_module(namespace)
    return module.Trainer(
        accelerator="cpu",
        devices=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        **kwargs,
    )


@pytest.fixture(scope="module")
def probe() -> dict:
    """A small rendered probe set: grid, per-probe rows, captions, and a 3-frame GIF source."""
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 10, 12, generator=gen)
    maps = torch.rand(2, 5, 6, generator=gen)
    return {
        "grid": R.probe_grid(images, maps, alpha=0.5),
        "rows": list(R.probe_rows(images, maps, alpha=0.5)),
        "rows_tensor": R.probe_rows(images, maps, alpha=0.5),
        "captions": ["probe 0: cat (pred dog)", "probe 1: dog"],
        "frames": [R.probe_grid(images, maps * k / 2, colormap="viridis") for k in range(3)],
    }


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def _read_png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _events(log_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _decoded_images(acc: EventAccumulator, tag: str) -> list[tuple[int, np.ndarray]]:
    return [
        (ev.step, np.asarray(Image.open(io.BytesIO(ev.encoded_image_string)).convert("RGB")))
        for ev in acc.Images(tag)
    ]


def _texts(acc: EventAccumulator, tag: str) -> list[tuple[int, str]]:
    out = []
    for ev in acc.Tensors(f"{tag}/text_summary"):
        value = tensor_util.make_ndarray(ev.tensor_proto).reshape(-1)[0]
        out.append((ev.step, value.decode()))
    return out


TABLE_COLUMNS = ["probe", "drift", "note"]
TABLE_ROWS = [[0, 0.123456, "ok"], [1, torch.tensor(2.5), "a|b"]]
TABLE_MD = "| probe | drift | note |\n|---|---|---|\n| 0 | 0.1235 | ok |\n| 1 | 2.5 | a\\|b |"


# --------------------------------------------------------------------------------------------
# TensorBoard
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_tensorboard_sink_round_trip(namespace: str, tmp_path: Path, probe: dict) -> None:
    logger = _loggers(namespace).TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    sink = S.sink_for_logger(logger, tmp_path)
    assert isinstance(sink, S.TensorBoardSink)
    sink.log_probe_images("gradcam/overlays", probe["grid"], probe["rows"], probe["captions"], 3)
    sink.log_text("gradcam/report", "# Report\n*ok*", 3)
    sink.log_table("gradcam/drift", TABLE_COLUMNS, TABLE_ROWS, 4)
    gif = R.write_gif(probe["frames"], tmp_path / "evolution.gif")
    sink.log_gif("gradcam/evolution", gif, 5)
    sink.flush()

    assert sink.log_dir == Path(logger.log_dir)
    acc = _events(Path(logger.log_dir))
    [(step, grid)] = _decoded_images(acc, "gradcam/overlays")
    assert step == 3 and np.array_equal(grid, _hwc(probe["grid"]))
    assert _texts(acc, "gradcam/report") == [(3, "# Report\n*ok*")]
    assert _texts(acc, "gradcam/drift") == [(4, TABLE_MD)]
    [(_, captions)] = _texts(acc, "gradcam/overlays/captions")
    assert "0. probe 0: cat (pred dog)" in captions and "1. probe 1: dog" in captions
    [event] = acc.Images("gradcam/evolution")  # the GIF itself: TensorBoard's <img> plays it
    assert event.step == 5 and event.encoded_image_string == gif.read_bytes()
    from PIL import Image

    with Image.open(io.BytesIO(event.encoded_image_string)) as played:
        assert played.format == "GIF" and played.n_frames == len(probe["frames"])


def test_tensorboard_and_file_sinks_write_jpeg(tmp_path: Path, probe: dict) -> None:
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    tb = S.sink_for_logger(TensorBoardLogger(save_dir=str(tmp_path), name="tb"), tmp_path, "jpeg")
    files = S.sink_for_logger(CSVLogger(save_dir=str(tmp_path), name="csv"), tmp_path, "jpeg")
    for sink in (tb, files):
        sink.log_probe_images("gradcam/overlays", probe["grid"], probe["rows"], [], 3)
        sink.log_image("gradcam/filmstrip", probe["grid"], 4)
    tb.flush()
    exact = _hwc(probe["grid"]).astype(np.float64)
    acc = _events(Path(tb.log_dir))
    for tag, at in (("gradcam/overlays", 3), ("gradcam/filmstrip", 4)):
        [event] = acc.Images(tag)
        assert event.step == at and event.encoded_image_string[:3] == b"\xff\xd8\xff"
        assert (event.height, event.width) == exact.shape[:2]
        [(_, decoded)] = _decoded_images(acc, tag)
        assert np.abs(decoded - exact).mean() < 4
    folder = Path(files.log_dir) / "gradcam" / "step=3"
    assert [p.name for p in folder.iterdir()] == ["gradcam_overlays.jpg"]
    assert np.abs(_read_png(folder / "gradcam_overlays.jpg") - exact).mean() < 4
    with pytest.raises(ValueError, match="did you mean 'jpeg'"):
        S.make_sinks(type("T", (), {"default_root_dir": str(tmp_path), "loggers": []})(), "jpg")


# --------------------------------------------------------------------------------------------
# Weights & Biases (offline)
# --------------------------------------------------------------------------------------------


@pytest.fixture
def wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    yield tmp_path
    wandb.finish()


def _wandb_logger(namespace: str, save_dir: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # wandb: "anonymous setting has no effect"
        return _loggers(namespace).WandbLogger(save_dir=str(save_dir), project="gradcam-test")


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_wandb_sink_offline(namespace: str, wandb_offline: Path, probe: dict) -> None:
    logger = _wandb_logger(namespace, wandb_offline)
    sink = S.sink_for_logger(logger, wandb_offline)
    assert isinstance(sink, S.WandbSink)
    rows = probe["rows_tensor"]  # the stacked [N, 3, h, w] output of probe_rows works as well
    sink.log_probe_images("gradcam/overlays", probe["grid"], rows, probe["captions"], 7)
    sink.log_table("gradcam/drift", TABLE_COLUMNS, TABLE_ROWS, 7)
    sink.log_text("gradcam/report", "# Report <ok>", 7)
    gif = R.write_gif(probe["frames"], wandb_offline / "evolution.gif")
    sink.log_gif("gradcam/evolution", gif, 8)
    run = logger.experiment
    assert run.summary["trainer/global_step"] == 8
    files = Path(run.dir)
    run.finish()

    pngs = sorted((files / "media" / "images").rglob("*.png"))
    decoded = [_read_png(p) for p in pngs]
    assert len(decoded) == 3  # two probe rows + the grid
    assert all(d.std() > 0 for d in decoded)
    expected = [_hwc(r) for r in probe["rows"]] + [_hwc(probe["grid"])]
    for want in expected:
        assert any(d.shape == want.shape and np.array_equal(d, want) for d in decoded)
    assert any("overlays_grid" in p.name for p in pngs)

    [table_file] = (files / "media" / "table").rglob("*.table.json")
    table = json.loads(table_file.read_text())
    assert table["columns"] == TABLE_COLUMNS
    assert table["data"] == [[0, 0.123456, "ok"], [1, 2.5, "a|b"]]
    [html_file] = (files / "media" / "html").rglob("*.html")
    assert "# Report &lt;ok&gt;" in html_file.read_text()
    [video] = (files / "media" / "videos").rglob("*.gif")
    assert video.read_bytes() == gif.read_bytes()


# --------------------------------------------------------------------------------------------
# Files (CSVLogger, no logger)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_csv_logger_writes_files(namespace: str, tmp_path: Path, probe: dict) -> None:
    logger = _loggers(namespace).CSVLogger(save_dir=str(tmp_path), name="csv")
    sink = S.sink_for_logger(logger, tmp_path / "unused")
    assert isinstance(sink, S.FileSink) and sink.log_dir == Path(logger.log_dir)
    sink.log_probe_images("gradcam/overlays", probe["grid"], probe["rows"], probe["captions"], 12)
    sink.log_image("gradcam/heat map:a", probe["rows"][1], 12, caption="second")
    sink.log_text("gradcam/report", "# Report", 12)
    sink.log_table("gradcam/drift", TABLE_COLUMNS, TABLE_ROWS, 13)
    gif = R.write_gif(probe["frames"], tmp_path / "evolution.gif")
    sink.log_gif("gradcam/evolution", gif, 14)

    base = Path(logger.log_dir) / "gradcam"
    assert np.array_equal(_read_png(base / "step=12" / "gradcam_overlays.png"), _hwc(probe["grid"]))
    row = _read_png(base / "step=12" / "gradcam_heat_map_a.png")
    assert np.array_equal(row, _hwc(probe["rows"][1]))
    assert (base / "step=12" / "gradcam_heat_map_a.md").read_text() == "second\n"
    captions = (base / "step=12" / "gradcam_overlays.md").read_text()
    assert captions == "0. probe 0: cat (pred dog)\n1. probe 1: dog\n"
    assert (base / "step=12" / "gradcam_report.md").read_text() == "# Report\n"
    assert (base / "step=13" / "gradcam_drift.md").read_text() == TABLE_MD + "\n"
    assert (base / "step=14" / "gradcam_evolution.gif").read_bytes() == gif.read_bytes()


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_no_logger_uses_default_root_dir(namespace: str, tmp_path: Path, probe: dict) -> None:
    trainer = _trainer(namespace, logger=False, default_root_dir=str(tmp_path))
    group = S.SinkGroup.from_trainer(trainer)
    assert [type(s) for s in group.sinks] == [S.FileSink]
    assert group.log_dir == tmp_path
    group.log_probe_images("gradcam/overlays", probe["grid"], probe["rows"], [], 0)
    png = tmp_path / "gradcam" / "step=0" / "gradcam_overlays.png"
    assert np.array_equal(_read_png(png), _hwc(probe["grid"]))
    assert not png.with_suffix(".md").exists()  # no captions, no caption file


# --------------------------------------------------------------------------------------------
# Several loggers, failures
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_several_loggers_at_once(
    namespace: str, wandb_offline: Path, tmp_path: Path, probe: dict
) -> None:
    loggers = _loggers(namespace)
    tb = loggers.TensorBoardLogger(save_dir=str(tmp_path), name="tb")
    csv = loggers.CSVLogger(save_dir=str(tmp_path), name="csv")
    wb = _wandb_logger(namespace, wandb_offline)
    trainer = _trainer(namespace, logger=[tb, csv, wb], default_root_dir=str(tmp_path / "root"))
    group = S.SinkGroup.from_trainer(trainer)
    assert [type(s) for s in group.sinks] == [S.TensorBoardSink, S.FileSink, S.WandbSink]
    assert group.log_dir == Path(tb.log_dir)

    with warnings.catch_warnings():
        warnings.simplefilter("error", S.SinkWarning)  # no sink may fail
        group.log_probe_images("gradcam/overlays", probe["grid"], probe["rows"], [], 2)
        group.log_table("gradcam/drift", TABLE_COLUMNS, TABLE_ROWS, 2)
        group.flush()
    files = Path(wb.experiment.dir)
    wb.experiment.finish()

    [(step, grid)] = _decoded_images(_events(Path(tb.log_dir)), "gradcam/overlays")
    assert step == 2 and np.array_equal(grid, _hwc(probe["grid"]))
    csv_png = Path(csv.log_dir) / "gradcam" / "step=2" / "gradcam_overlays.png"
    assert np.array_equal(_read_png(csv_png), _hwc(probe["grid"]))
    assert (csv_png.parent / "gradcam_drift.md").read_text() == TABLE_MD + "\n"
    assert len(list((files / "media" / "images").rglob("*.png"))) == 3
    assert len(list((files / "media" / "table").rglob("*.table.json"))) == 1
    assert group.failures == []


@pytest.mark.parametrize("namespace", NAMESPACES)
def test_failing_logger_warns_once(namespace: str, tmp_path: Path, probe: dict) -> None:
    loggers = _loggers(namespace)

    class BrokenTensorBoard(loggers.TensorBoardLogger):
        @property
        def experiment(self):
            raise RuntimeError("writer is gone")

    broken = BrokenTensorBoard(save_dir=str(tmp_path), name="broken")
    csv = loggers.CSVLogger(save_dir=str(tmp_path), name="csv")
    group = S.SinkGroup([S.sink_for_logger(lg, tmp_path) for lg in (broken, csv)])
    assert isinstance(group.sinks[0], S.TensorBoardSink)  # subclass recognised

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in (1, 2):
            group.log_probe_images("gradcam/overlays", probe["grid"], probe["rows"], [], step)
            group.log_text("gradcam/report", f"step {step}", step)
            group.log_table("gradcam/drift", TABLE_COLUMNS, TABLE_ROWS, step)
    sink_warnings = [w for w in caught if issubclass(w.category, S.SinkWarning)]
    assert len(sink_warnings) == 1
    message = str(sink_warnings[0].message)
    assert "BrokenTensorBoard" in message and "writer is gone" in message
    assert [method for _, method, _ in group.failures] == [
        "log_probe_images",
        "log_text",
        "log_table",
    ]

    for step in (1, 2):
        folder = Path(csv.log_dir) / "gradcam" / f"step={step}"
        assert np.array_equal(_read_png(folder / "gradcam_overlays.png"), _hwc(probe["grid"]))
        assert (folder / "gradcam_report.md").read_text() == f"step {step}\n"
        assert (folder / "gradcam_drift.md").is_file()


class _GifFails:
    """A sink whose log_gif raises; records the other calls."""

    name = "gif-fails"

    def __init__(self) -> None:
        self.images: list[int] = []
        self.gif_calls = 0

    def log_image(self, tag, image, step, caption=None) -> None:
        self.images.append(step)

    def log_gif(self, tag, path, step) -> None:
        self.gif_calls += 1
        raise OSError("no gif support")


def test_failed_call_kind_is_skipped_other_kinds_go_on(tmp_path: Path, probe: dict) -> None:
    sink = _GifFails()
    group = S.SinkGroup([sink], log_dir=tmp_path / "art")
    with pytest.warns(S.SinkWarning, match="gif-fails sink .* log_gif: OSError: no gif support"):
        group.log_gif("gradcam/evolution", tmp_path / "x.gif", 1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        group.log_gif("gradcam/evolution", tmp_path / "x.gif", 2)
        group.log_image("gradcam/one", probe["grid"], 3)
        group.log_image("gradcam/one", probe["grid"], 4)
    assert sink.gif_calls == 1 and sink.images == [3, 4]
    assert group.log_dir == tmp_path / "art"


def test_only_lightning_classes_are_recognised(tmp_path: Path) -> None:
    class TensorBoardLogger:  # same name, not Lightning's
        log_dir = str(tmp_path / "elsewhere")

    sink = S.sink_for_logger(TensorBoardLogger(), tmp_path)
    assert isinstance(sink, S.FileSink) and sink.log_dir == tmp_path / "elsewhere"


def test_markdown_table_formats_cells() -> None:
    table = S.markdown_table(["a", "b"], [[np.float32(0.5), "x\ny"], [torch.tensor(3), 1e-7]])
    assert table.splitlines() == ["| a | b |", "|---|---|", "| 0.5 | x<br>y |", "| 3 | 1e-07 |"]


def test_tensorboard_checksums_in_c_are_the_same(tmp_path: Path) -> None:
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow
    from tensorboard.summary.writer import record_writer
    from torch.utils.tensorboard import SummaryWriter

    assert S.fast_tensorboard_crc()
    fast = record_writer.masked_crc32c
    assert fast.gradcam_fast and S.fast_tensorboard_crc()  # installed once
    gen = torch.Generator().manual_seed(0)
    for n in (0, 1, 7, 8, 9, 4096, 100_003):
        data = bytes(torch.randint(0, 256, (n,), generator=gen, dtype=torch.uint8).tolist())
        assert fast(data) == pywrap_tensorflow.masked_crc32c(data), n
    # event files written with it read back through TensorBoard's own checksum verification
    writer = SummaryWriter(str(tmp_path))
    image = torch.randint(0, 256, (3, 40, 50), generator=gen, dtype=torch.uint8)
    writer.add_image("x", image, 3)
    writer.add_scalar("y", 1.5, 3)
    writer.close()
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [e.value for e in acc.Scalars("y")] == [1.5]
    (event,) = acc.Images("x")
    got = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))
    assert np.array_equal(got, image.permute(1, 2, 0).numpy())
