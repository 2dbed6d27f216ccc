"""Held-out planted-shortcut worlds on real handwritten digits, for the shortcut-detection benchmark.

Every world pastes scikit-learn's ``load_digits()`` images (1797 real 8x8 handwritten digits,
upscaled bilinearly to ``digit_size``) at a random position on a larger RGB canvas with a mild
random blob-and-noise background, and plants a label artifact. The digits of the training and
validation sets come from disjoint halves of the 1797 images, so validation accuracy measures
generalisation to unseen handwriting.

Worlds (``WORLDS``; split in brackets):

====  =============================================================  ========  =====  ================
name  artifact                                                        classes   model  split
====  =============================================================  ========  =====  ================
W1    corner watermark glyph (top left, one glyph per class)          3 vs 8    cnn    calibration
W2    "hospital token": a red square, top right, on ONE class only    10        cnn    held-out
W3    background stripe texture (orientation per class)               1 vs 7    cnn    calibration
W4    moving mark: random position per image, colour+shape per class  2 vs 5    cnn    held-out
W5    corner tag (bottom right, colour per class), 90/10 correlation  4 vs 9    cnn    calibration
W6    border band along the left edge (colour per class)              0 vs 6    rn18   held-out
W7    text-like tag, top left (dark "characters" per class on white)  10        rn18   held-out
W8    corner watermark glyph ("coarse maps": layer4 is 2x2 at 64 px)  3 vs 8    rn18   calibration
W9    thin ruler: 1-px line + 2-px ticks along the bottom edge         2 vs 7    cnn    calibration
W10   thin 2-px vertical line near the right edge (64 px)             5 vs 9    rn18   held-out
W11   jittered token: 5x5 square, top right, +-3 px per image         0 vs 3    cnn    calibration
W12   jittered scanner text: glyph pair, bottom left, +-4 px (64 px)  1, 6, 8   cnn    held-out
W13   group shortcut: top ruler on 95% of classes 0-1, 5% of rest     0-4       cnn    calibration
W14   group shortcut: scale bar on 95% of classes 2, 4, 5% of the rest 5-9      rn18   held-out
W19   group shortcut: ring stamp (top right) on 95% of classes 1, 3    0-4       rn18   calibration
W21   group shortcut: notched tab (left edge) on 95% of 0, 3, 4 of 6   6 digits  rn18   held-out
W23   group shortcut: notched tab (right edge) on 95% of 1, 2, 5 of 6  6 digits  rn18   calibration
W24   thin 2-px horizontal line near the top edge (64 px)             3 vs 6    rn18   calibration
W25   group shortcut: corner bracket (bottom right) on 95% of 0, 3     5 digits  rn18   held-out
W26   jittered thin plus sign (1-px arms, left edge, +-3 px, 56 px)    2, 4, 7   cnn    held-out
W27   thin diagonal fold line (2 px per row), bottom-left, 60 px      1, 4, 9   cnn    held-out
W28   group shortcut: lime wedge (top centre) on 95% of 1, 3 of 6     6 digits  rn18   held-out
W29   jittered token: 7x7 diamond, bottom centre, +-3 px, 52 px       4 digits  cnn    held-out
W30   radiograph side marker (letter L/R/A/P, right edge), 90/10      4 digits  cnn    held-out
W31   background colour cast per class over the whole background      2, 6, 9   cnn    held-out (*)
W33   group shortcut: punched holes (left edge, low) on 95% of 3 of 6  6 digits  cnn    held-out (*)
W34   thin 2-px scanner frame along the bottom and right edges        0, 5, 7   rn18   held-out (*)
W35   background exposure per class (grey contrast + brightness)      0, 4, 7   cnn    calibration
W36   thin 2-px scanner frame along the top and left edges            1, 4, 6   rn18   calibration
W37   background vignette per class (smooth radial grey, 60 px)       3, 5, 8   cnn    held-out (+)
W38   3-px dashed frame on all four edges, colour per class, 52 px    2, 8, 9   cnn    held-out (+)
W39   group shortcut: barcode (bottom centre) on 95% of 2 of 5        5 digits  rn18   held-out (+)
W40   thin 1-px dashed line through the centre, angle per class       0, 6, 9   cnn    held-out (+)
W41   background colour cast per class, stronger towards the right    1, 5, 8   cnn    calibration (++)
W42   group shortcut: corner bracket (top left) on 95% of 1, 4 of 5   5 digits  rn18   calibration (++)
W43   multi-label: upright sticker (top right) tied to finding 0      4 digits  rn18   calibration (++)
W44   group shortcut: dark round grommet (bottom left) on 95% of 2, 4  5 digits  rn18   held-out (+++)
W45   group shortcut: light hatched tape (right edge, top) on 3 of 6   6 digits  cnn    held-out (+++)
W46   round colour stamp half-way to the top-right corner, 90/10      0, 4, 7   cnn    held-out (+++)
W47   group shortcut: light date stamp (top left) on 95% of 0, 3 of 5  5 digits  rn18   held-out (4+)
W48   thin 1-px diagonal scratch (bottom right), colour per class     2, 7      cnn    held-out (4+)
W49   group shortcut: dark hole punch (top edge middle) on 2 of 6      6 digits  cnn    held-out (4+)
W50   group shortcut: light staple (top right) on 1, 3; class places  5 digits  rn18   calibration (5+)
====  =============================================================  ========  =====  ================

(*) built as a reserve after 0.3.3's change was decided, validated with ground truth only, then run
with flags once, as 0.3.3's last check (benchmarks/DETECTION.md).
(+) built after 0.3.4's change was decided on the calibration split, validated with ground truth
only (no Grad-CAM callback, no monitor, no flags looked at) to judge that change.
(++) built after 0.3.4 to reproduce, on the calibration split, the three kinds of failure its
held-out split still showed (W31, W25, W16): a new instance of each world's kind (other colours,
position, digits, size). Validated with ground truth first, then run with flags once (being
calibration worlds): only W42 fails like its held-out counterpart (see the comment at W41-W43).
(+++) built for the seventh round while the monitor's next change was being made, to judge it;
validated with ground truth only (no Grad-CAM callback, no monitor, no flags looked at; see the
comment at W44-W46).
(4+) built while the monitor's next change after W44-W46 was being made, to judge it; validated
with ground truth only (no Grad-CAM callback, no monitor, no flags looked at; see the comment at
W47-W49).
(5+) built to reproduce W21's and W44's clean-control false alarm on the calibration split: each
class's digit sits near its own off-centre point (``place_jitter``), in both worlds (see the comment
at W50).

W15-W18 (multi-label and few-probe worlds), W20, W22 (multi-label on ResNet-18, coarse maps) and
W32 (multi-label, small CNN: a calibration checker, bottom centre, tied to one finding; held-out,
built and first run like W31, W33, W34) and W43 (multi-label, ResNet-18, calibration (++)) are
defined at the end of the module
(:class:`MultiLabelSpec`, :class:`FewProbeSpec`).

So CALIBRATION = W1, W3, W5, W8, W9, W11, W13 (+ W15, W17, W19, W20, W23, W24, and W35, W36: a
calibration world for each of the two families whose held-out worlds W31, W34 were missed without
masks, background and border, validated with ground truth only; and W41-W43, built after 0.3.4 to
reproduce W31's, W25's and W16's failure kinds for the next round; and W50 (5+) built to
reproduce W21's and W44's clean-control false alarm on the calibration split) and HELD-OUT =
W2, W4, W6, W7, W10, W12, W14 (+ W16, W18, W21, W22, W25, W26, and W27-W30, one fresh world per
family: thin, group, jittered, plain per-class label artifact, validated with ground truth only
and fixed before any monitor ran on them; and W31-W34, one fresh world per family: background,
multi-label, group, border, built the same way after 0.3.3's change was decided and run with
flags once; and W37-W40, one fresh world per family: background, border, group, thin, built after
0.3.4's change was decided and validated with ground truth only; and W44-W46, two group worlds
and a plain per-class label artifact away from the edges, built for the seventh round and
validated with ground truth only; and W47-W49, two group worlds and a thin per-class scratch,
built the same way for the next change): both splits have small-CNN and ResNet-18 worlds; the
held-out split has the two 10-class worlds, the one-class artifact and the moving artifact.
W9-W14 are three families the first eight did not have, one calibration and one held-out world
each, differing in geometry, colour, classes, image size and model: *thin* artifacts (a line
thinner than a map cell), *jittered* tokens (a mark that shifts by a few pixels from image to
image) and *group* shortcuts (one artifact shared by two of five classes: it tells the group, the
digit tells the class inside it; "swapped" takes it off the group's images and puts it on the
others'). W4 is scored with object/artifact masks only (without masks nothing tells the callback
where a moving mark is).

Every world comes as a shortcut world (the artifact follows the label with probability
``correlation``, otherwise another class's artifact) and as its clean control
(``shortcut=False``: the same images, the artifact class drawn independently of the label).
Ground truth comes from the validation set in three variants (:meth:`DigitWorld.variant`):
``"present"`` (as generated), ``"removed"`` (no artifact: the pixels inside the artifact mask
restored to the background) and ``"swapped"`` (each image carries the artifact of a class whose
artifact differs from its own class's one).

A sample is ``(image [3, H, W] float32 normalised with MEAN/STD, label long, object_mask [H, W]
bool, artifact_mask [H, W] bool)``; the masks are disjoint. Everything is drawn from local
``torch.Generator`` objects (never the global RNG) and is deterministic from the seed; generated
tensors are cached in memory per world object.

Nothing here imports ``gradcam_callback``: the worlds are independent of the code they judge.
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, replace
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset

MEAN = (0.5, 0.5, 0.5)
STD = (0.25, 0.25, 0.25)
MODES = ("present", "removed", "swapped")
Mode = Literal["present", "removed", "swapped"]
ArtifactKind = Literal[
    "watermark",
    "token",
    "texture",
    "moving",
    "tag",
    "border",
    "text",
    "ruler",
    "line",
    "jitter_square",
    "jitter_text",
    "group_bar",
    "group_scale",
    "group_stamp",
    "group_tab",
    "group_edge_tab",
    "group_bracket",
    "hline",
    "jitter_cross",
    "diagonal",
    "group_wedge",
    "jitter_diamond",
    "side_marker",
    "tint",
    "group_punch",
    "frame",
    "exposure",
    "frame_top_left",
    "vignette",
    "frame_dashed",
    "group_barcode",
    "angled_line",
    "tint_right",
    "group_bracket_top_left",
    "group_grommet",
    "group_tape",
    "inset_stamp",
    "group_date_stamp",
    "scratch",
    "group_hole_punch",
    "group_staple",
]


@dataclass(frozen=True)
class WorldSpec:
    """One planted-shortcut world.

    Attributes:
        name: short id (``"W1"``).
        title: one line: what the artifact is.
        split: ``"calibration"`` or ``"heldout"``.
        digits: the digit classes used; label ``k`` is ``digits[k]``.
        artifact: the artifact kind (see :func:`apply_artifact`).
        arch: ``"cnn"`` (:class:`SmallCNN`) or ``"resnet18"`` (torchvision, random init).
        image_size: canvas side in pixels.
        digit_size: side of the upscaled digit.
        correlation: probability that a shortcut-world image carries its own class's artifact.
        token_class: the one class that carries the artifact (``artifact="token"`` only).
        n_train, n_val: number of generated images.
        epochs: training epochs.
        lr: Adam learning rate.
        batch_size: training batch size.
        masks_only: score only the run that uses masks (the nomask run is reported, not counted).
        digit_contrast: opacity of the digit's ink in (0, 1] (lower: digits harder to read).
        group: the classes that share one artifact (``artifact="group_*"`` only): it is on
            ``correlation`` of their images and on ``1 - correlation`` of the others' images.
        jitter: the artifact moves by up to this many pixels per image and axis (``jitter_*``).
        place_jitter: ``None`` (default): the digit is placed uniformly at random; else each
            class's digit is placed within +-``place_jitter`` px (per axis) of a class-typical
            off-centre point (:func:`class_place`), in the shortcut world and its clean control.
        place_angles: with ``place_jitter``: the angle of each class's point (degrees from the
            x axis, y down); empty: evenly spaced, class 0 above the centre, then clockwise.
    """

    name: str
    title: str
    split: Literal["calibration", "heldout"]
    digits: tuple[int, ...]
    artifact: ArtifactKind
    arch: Literal["cnn", "resnet18"] = "cnn"
    image_size: int = 48
    digit_size: int = 24
    correlation: float = 1.0
    token_class: int = 0
    n_train: int = 1200
    n_val: int = 400
    epochs: int = 4
    lr: float = 2e-3
    batch_size: int = 64
    masks_only: bool = False
    digit_contrast: float = 1.0
    group: tuple[int, ...] = ()
    jitter: int = 0
    place_jitter: int | None = None
    place_angles: tuple[float, ...] = ()

    @property
    def num_classes(self) -> int:
        return len(self.digits)


ALL_DIGITS = tuple(range(10))
WORLDS: dict[str, WorldSpec] = {
    s.name: s
    for s in (
        WorldSpec("W1", "corner watermark glyph, top left", "calibration", (3, 8), "watermark"),
        WorldSpec(
            "W2",
            "hospital token (red square, top right) on class 0 only",
            "heldout",
            ALL_DIGITS,
            "token",
            n_train=1500,
            epochs=10,
        ),
        WorldSpec("W3", "background stripe texture per class", "calibration", (1, 7), "texture"),
        WorldSpec(
            "W4",
            "moving mark (random position, colour+shape per class)",
            "heldout",
            (2, 5),
            "moving",
            masks_only=True,
        ),
        WorldSpec(
            "W5",
            "corner tag, bottom right, 90/10 correlation",
            "calibration",
            (4, 9),
            "tag",
            correlation=0.9,
            digit_contrast=0.5,
        ),
        WorldSpec(
            "W6",
            "border band along the left edge, colour per class",
            "heldout",
            (0, 6),
            "border",
            arch="resnet18",
            image_size=64,
            digit_size=32,
            n_train=600,
            n_val=200,
            epochs=3,
        ),
        WorldSpec(
            "W7",
            "text-like tag per class, top left",
            "heldout",
            ALL_DIGITS,
            "text",
            arch="resnet18",
            image_size=64,
            digit_size=40,
            n_train=1000,
            n_val=200,
            epochs=4,
        ),
        WorldSpec(
            "W8",
            "corner watermark glyph, ResNet-18 (layer4 2x2)",
            "calibration",
            (3, 8),
            "watermark",
            arch="resnet18",
            image_size=64,
            digit_size=32,
            n_train=800,
            n_val=200,
            epochs=3,
        ),
        WorldSpec(
            "W9",
            "thin ruler (1-px line, 2-px ticks) along the bottom edge, colour per class",
            "calibration",
            (2, 7),
            "ruler",
        ),
        WorldSpec(
            "W10",
            "thin 2-px vertical line near the right edge, colour per class, ResNet-18",
            "heldout",
            (5, 9),
            "line",
            arch="resnet18",
            image_size=64,
            digit_size=32,
            n_train=600,
            n_val=200,
            epochs=3,
        ),
        WorldSpec(
            "W11",
            "jittered token (5x5 square near the top right, +-3 px per image), colour per class",
            "calibration",
            (0, 3),
            "jitter_square",
            jitter=3,
        ),
        WorldSpec(
            "W12",
            "jittered scanner text (3x7 px glyph pair, bottom left, +-4 px), 3 classes, 64 px",
            "heldout",
            (1, 6, 8),
            "jitter_text",
            image_size=64,
            digit_size=32,
            jitter=4,
            epochs=5,
        ),
        WorldSpec(
            "W13",
            "group shortcut: dark ruler along the top edge on 95% of classes 0-1 of 5, 5% of others",
            "calibration",
            (0, 1, 2, 3, 4),
            "group_bar",
            correlation=0.95,
            group=(0, 1),
            n_train=1500,
            epochs=6,
        ),
        WorldSpec(
            "W14",
            "group shortcut: scale bar (bottom left) on 95% of classes 2, 4 of 5, 5% of others",
            "heldout",
            (5, 6, 7, 8, 9),
            "group_scale",
            arch="resnet18",
            image_size=64,
            digit_size=32,
            correlation=0.95,
            group=(2, 4),
            n_train=1000,
            n_val=200,
            epochs=4,
        ),
    )
}


def select_worlds(names: str | None = None, split: str = "all") -> list[WorldSpec]:
    """Worlds by comma-separated names (``"W1,W3"``) or by split (``calibration|heldout|all``)."""
    if names:
        wanted = [n.strip().upper() for n in names.split(",") if n.strip()]
        unknown = [n for n in wanted if n not in WORLDS]
        if unknown:
            raise ValueError(f"unknown world(s) {unknown}; choose from {', '.join(WORLDS)}")
        return [WORLDS[n] for n in wanted]
    if split not in ("calibration", "heldout", "all"):
        raise ValueError(f"split must be calibration, heldout or all, got {split!r}")
    return [s for s in WORLDS.values() if split in ("all", s.split)]


# ----------------------------------------------------------------------------------- the digits
@functools.lru_cache(maxsize=1)
def _digits() -> tuple[Tensor, Tensor]:
    """scikit-learn's digits: images float32 ``[1797, 8, 8]`` in [0, 1], labels long ``[1797]``."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the detection benchmark needs scikit-learn (it ships the digits): "
            "pip install 'scikit-learn>=1.3' (or pip install -e '.[dev]')"
        ) from err
    data = load_digits()
    images = torch.as_tensor(data.images, dtype=torch.float32) / 16.0
    return images, torch.as_tensor(data.target, dtype=torch.long)


def _seed(*parts: object) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


# ------------------------------------------------------------------------------- the artifacts
def _glyphs() -> list[Tensor]:
    n = torch.zeros(7, 7)
    n[:, 0] = n[:, 6] = 1
    for i in range(7):
        n[i, i] = 1
    z = torch.zeros(7, 7)
    z[0, :] = z[6, :] = 1
    for i in range(7):
        z[i, 6 - i] = 1
    return [n, z]


def _text_chars(num_classes: int) -> list[Tensor]:
    """Per class a ``[5, 11]`` bitmap: three 3x5 "characters" (a fixed one, two per class)."""
    g = torch.Generator().manual_seed(1234)
    fixed = torch.tensor([[1, 1, 1], [0, 1, 0], [0, 1, 0], [0, 1, 0], [0, 1, 0]], dtype=torch.float)
    seen: set[bytes] = set()
    out = []
    while len(out) < num_classes:
        chars = (torch.rand(2, 5, 3, generator=g) < 0.55).float()
        key = chars.numpy().tobytes()
        if key in seen or chars.sum() < 10:
            continue
        seen.add(key)
        bitmap = torch.zeros(5, 11)
        bitmap[:, 0:3] = fixed
        bitmap[:, 4:7] = chars[0]
        bitmap[:, 8:11] = chars[1]
        out.append(bitmap)
    return out


def _jitter_glyphs() -> list[Tensor]:
    """Per class a ``[3, 7]`` bitmap: two 3x3 "characters" one pixel apart."""
    rows = (
        [[1, 0, 1, 0, 1, 1, 1], [0, 1, 0, 0, 1, 0, 0], [1, 0, 1, 0, 1, 1, 1]],
        [[1, 1, 1, 0, 0, 1, 0], [1, 0, 1, 0, 1, 1, 1], [1, 1, 1, 0, 0, 1, 0]],
        [[0, 1, 0, 0, 1, 1, 0], [1, 1, 1, 0, 0, 1, 0], [0, 1, 0, 0, 0, 1, 1]],
    )
    return [torch.tensor(r, dtype=torch.float) for r in rows]


BORDER_COLOURS = ((0.95, 0.25, 0.2), (0.2, 0.85, 0.3))
TAG_COLOURS = ((1.0, 0.8, 0.0), (0.0, 0.75, 1.0))
# (top-left (y, x), (height, width), colours per class, corner cut px, spare px in the digit's
# zone) of a per-class tag kind: a filled patch, one colour per class. A position is in pixels
# from the top / left edge (negative: from the bottom / right edge) or, as a float, the fraction
# of the side the patch is centred on; a corner cut of c px takes the pixels less than c steps
# (L1) from each corner off (2: a round stamp); the shape "diagonal" keeps only the 1-px line
# from the bottom-left to the top-right corner of a square patch (a scratch). A group kind
# (``group_*``) has one colour: every group class draws design 0
TAG_STYLES = {
    "tag": ((-7, -9), (6, 8), TAG_COLOURS, 0, 1),
    "inset_stamp": (
        (0.27, 0.73),
        (6, 6),
        ((1.0, 0.3, 0.1), (0.2, 0.9, 0.95), (0.85, 0.4, 1.0)),
        2,
        2,
    ),
    "scratch": ((-12, -12), (8, 8), ((0.92, 0.92, 0.92), (1.0, 0.35, 0.6)), "diagonal", 1),
    "group_hole_punch": ((2, 0.5), (5, 5), ((0.06, 0.05, 0.07),), 0, 2),
    "group_staple": ((2, -10), (2, 8), ((0.96, 0.95, 0.88),), 0, 2),
}
RULER_COLOURS = ((1.0, 0.95, 0.2), (0.2, 0.95, 1.0))
LINE_COLOURS = ((0.95, 0.2, 0.95), (0.95, 0.95, 0.95))
JITTER_COLOURS = ((1.0, 0.5, 0.0), (0.3, 1.0, 0.3), (0.6, 0.3, 1.0))
MOVING_COLOURS = ((1.0, 0.2, 0.2), (0.2, 0.4, 1.0))
STAMP_COLOUR = (1.0, 0.85, 0.15)
# (corner, colour, side px or (height, width), wall px, px off the edges, corner cut px, fill) of
# a group ring-stamp kind: a square or rectangular ring, its outer corners cut as in TAG_STYLES
# (2: a round grommet); fill None: hollow (the background shows through its hole), else the
# colour inside the wall (a light label with a dark outline)
STAMP_STYLES: dict[str, tuple] = {
    "group_stamp": ("top_right", STAMP_COLOUR, 10, 3, 2, 0, None),
    "group_grommet": ("bottom_left", (0.07, 0.06, 0.09), 9, 2, 3, 2, None),
    "group_date_stamp": ("top_left", (0.08, 0.08, 0.1), (6, 10), 1, 3, 1, (0.96, 0.94, 0.86)),
}
TAB_COLOUR = (0.1, 0.8, 0.9)
EDGE_TAB_COLOUR = (1.0, 0.45, 0.1)
# (edge, centre row as a fraction of the height, length px, colour, notch grey or colour, first
# notch row, notch step) of a group edge-tab kind: a 4-px wide tab 1 px off the edge whose notches
# (1-px rows across its outer 3 px) are dark, light or a faint hatch
TAB_STYLES = {
    "group_tab": ("left", 0.5, 16, TAB_COLOUR, 0.05, 3, 4),
    "group_edge_tab": ("right", 0.5, 14, EDGE_TAB_COLOUR, 0.98, 2, 3),
    "group_tape": ("right", 0.2, 12, (0.93, 0.9, 0.78), (0.8, 0.77, 0.66), 1, 2),
}
BRACKET_COLOUR = (0.95, 0.6, 0.85)
# (corner, colour) of a corner-bracket kind: an L with 2-px arms 10 px long, 2 px off the edges
BRACKET_STYLES = {
    "group_bracket": ("bottom_right", BRACKET_COLOUR),
    "group_bracket_top_left": ("top_left", (0.4, 0.75, 1.0)),
}
HLINE_COLOURS = ((0.2, 1.0, 0.6), (1.0, 0.3, 0.3))
CROSS_COLOURS = ((0.2, 0.6, 1.0), (1.0, 0.9, 0.2), (0.9, 0.2, 0.9))
DIAGONAL_COLOURS = ((1.0, 0.35, 0.55), (0.35, 1.0, 0.85), (0.95, 0.95, 0.55))
WEDGE_COLOUR = (0.6, 1.0, 0.2)
DIAMOND_COLOURS = ((0.0, 0.8, 0.7), (1.0, 0.55, 0.75), (0.95, 0.95, 0.95), (1.0, 0.1, 0.1))
DIAGONAL_LENGTH = 16
TINT_COLOURS = ((1.0, 0.7, 0.3), (0.3, 0.55, 1.0), (0.5, 1.0, 0.45))
TINT_STRENGTH = (0.1, 0.35)  # the cast's opacity at the top row and at the bottom row
# (colours per class, (opacity at the weak edge, at the strong edge), the strong edge) of a
# colour-cast kind: the cast grows linearly across the image towards its strong edge
TINT_STYLES = {
    "tint": (TINT_COLOURS, TINT_STRENGTH, "bottom"),
    "tint_right": (((1.0, 0.35, 0.85), (0.2, 0.85, 0.8), (0.95, 0.9, 0.2)), TINT_STRENGTH, "right"),
}
PUNCH_COLOUR = (0.95, 0.95, 0.9)
FRAME_COLOURS = ((0.75, 0.4, 1.0), (1.0, 0.8, 0.4), (0.4, 0.95, 0.95))
FRAME_EDGES = {
    "frame": ("bottom", "right"),
    "frame_top_left": ("top", "left"),
    "frame_dashed": ("top", "bottom", "left", "right"),
}
FRAME_WIDTH = 2  # the frame's thickness in px; the digit keeps 2 px more off its edges
DASHED_FRAME_COLOURS = ((1.0, 1.0, 0.35), (0.3, 0.6, 1.0), (1.0, 0.4, 0.7))
# (width px, dash length px (0: solid), colours) of a frame kind; the others: FRAME_WIDTH, solid
FRAME_STYLES = {"frame_dashed": (3, 4, DASHED_FRAME_COLOURS)}
DASH_DARK = 0.06  # the grey of the gaps between a dashed frame's coloured segments
# (contrast, brightness) of the background per class: a scanner's exposure setting, grey only
EXPOSURE_LEVELS = ((0.5, -0.08), (1.0, 0.15), (1.8, 0.0))
EXPOSURE_PIVOT = 0.3  # the grey level the contrast scales around (about the mean background)
# (centre y, centre x as fractions of the side, grey offset at the centre, at the farthest corner)
# per class: a lens's or lamp's uneven illumination, smooth and radial (offset linear in r**2)
VIGNETTE_PROFILES = ((0.5, 0.5, 0.12, -0.25), (0.5, 0.5, -0.12, 0.25), (0.0, 0.0, 0.2, -0.2))
BARCODE = "1011010011101011011"  # the bars of the group barcode label (1: a dark bar)
ANGLED_LINE_DEGREES = (20.0, 80.0, 140.0)  # the angle per class (from the x axis, y down)
ANGLED_LINE_DASH = (4, 2)  # px on, px off, along the line's major axis
ANGLED_LINE_COLOUR = (0.95, 0.95, 0.75)


def _side_letters() -> list[Tensor]:
    """Per class a ``[7, 5]`` bitmap: the side / view letters L, R, A, P of a radiograph marker."""
    rows = (
        ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
        ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
        ["01110", "10001", "10001", "11111", "10001", "10001", "10001"],
        ["11110", "10001", "10001", "11110", "10000", "10000", "10000"],
    )
    return [torch.tensor([[float(c) for c in r] for r in letter]) for letter in rows]


PLACE_REACH = 0.4  # a class's digit point: this fraction of the way to the canvas's edge


def class_place(spec: WorldSpec, cls: int) -> tuple[int, int]:
    """The top-left corner ``(y, x)`` of class ``cls``'s typical digit position
    (``spec.place_jitter`` worlds): its centre :data:`PLACE_REACH` of the way from the canvas's
    centre to its edge (a corner on the diagonals), at the angle ``spec.place_angles[cls]`` or,
    without them, ``-90 + 360 * cls / classes`` degrees (class 0 above the centre, clockwise)."""
    s, d = spec.image_size, spec.digit_size
    degrees = (
        spec.place_angles[cls] if spec.place_angles else -90.0 + 360.0 * cls / spec.num_classes
    )
    theta = math.radians(degrees)
    uy, ux = math.sin(theta), math.cos(theta)
    reach = PLACE_REACH * (s / 2) / max(abs(uy), abs(ux))  # to the square's boundary
    return round((s - d) / 2 + reach * uy), round((s - d) / 2 + reach * ux)


def _clear_of(y0: int, x0: int, d: int, reserved: list[tuple[int, int, int, int]]) -> bool:
    """A ``d``-px square at ``(y0, x0)`` overlaps none of the ``(y0, x0, y1, x1)`` boxes."""
    return all(
        y0 >= ry1 or y0 + d <= ry0 or x0 >= rx1 or x0 + d <= rx0 for ry0, rx0, ry1, rx1 in reserved
    )


def design_of(spec: WorldSpec, cls: int) -> int | None:
    """The artifact design of class ``cls``; ``None``: the class carries no artifact."""
    if spec.artifact == "token":
        return 0 if cls == spec.token_class else None
    if spec.artifact.startswith("group_"):
        return 0 if cls in spec.group else None
    return cls


def shortcut_classes(spec: WorldSpec) -> tuple[int, ...]:
    """The classes whose images carry an artifact design: the ones a flag should name."""
    return tuple(c for c in range(spec.num_classes) if design_of(spec, c) is not None)


def reserved_boxes(spec: WorldSpec) -> list[tuple[int, int, int, int]]:
    """Every fixed artifact zone ``(y0, x0, y1, x1)`` (exclusive ends) the digit must avoid:
    none, the one :func:`reserved_box`, or one per edge of a frame (:data:`FRAME_EDGES`)."""
    s = spec.image_size
    if spec.artifact in FRAME_EDGES:  # one strip per edge, the frame's width + 2 px to spare
        r = frame_style(spec.artifact)[0] + 2
        strips = {
            "bottom": (s - r, 0, s, s),
            "right": (0, s - r, s, s),
            "top": (0, 0, r, s),
            "left": (0, 0, s, r),
        }
        return [strips[e] for e in FRAME_EDGES[spec.artifact]]
    box = reserved_box(spec)
    return [] if box is None else [box]


def reserved_box(spec: WorldSpec) -> tuple[int, int, int, int] | None:
    """The fixed artifact zone ``(y0, x0, y1, x1)`` (exclusive ends) the digit must avoid
    (``None``: no zone, or several: see :func:`reserved_boxes`)."""
    s = spec.image_size
    if spec.artifact == "watermark":
        return (0, 0, 10, 10)
    if spec.artifact == "token":
        return (0, s - 9, 9, s)
    if spec.artifact in TAG_STYLES:  # the tag's box, its style's spare px around it
        (y, x), (th, tw) = tag_box(spec.artifact, s, s)
        spare = TAG_STYLES[spec.artifact][4]
        return (y - spare, x - spare, min(y + th + spare, s), min(x + tw + spare, s))
    if spec.artifact == "border":
        return (0, 0, s, 6)
    if spec.artifact == "text":
        return (0, 0, 10, 16)
    if spec.artifact == "ruler":
        return (s - 6, 0, s, s)
    if spec.artifact == "line":
        return (0, s - 6, s, s)
    j = spec.jitter
    if spec.artifact == "jitter_square":
        return (7 - j - 1, s - 12 - j - 1, 12 + j + 1, s - 7 + j + 1)
    if spec.artifact == "jitter_text":
        return (s - 12 - j - 1, 6 - j - 1, s - 7 + j + 1, 13 + j + 1)
    if spec.artifact == "group_bar":
        return (0, 0, 5, s)
    if spec.artifact == "group_scale":
        return (s - 10, 0, s, 26)
    if spec.artifact in STAMP_STYLES:  # the stamp's corner box, 2 px to spare
        corner, _, side, _, off, *_ = STAMP_STYLES[spec.artifact]
        sh, sw = _stamp_size(side)
        rh, rw = off + sh + 2, off + sw + 2
        y0, x0 = (0 if corner.startswith("top") else s - rh), (0 if "left" in corner else s - rw)
        return (y0, x0, y0 + rh, x0 + rw)
    if spec.artifact in TAB_STYLES:  # the tab's rows, 2 px to spare, and the edge's 7 px
        edge, _, length, *_ = TAB_STYLES[spec.artifact]
        y = tab_top(spec.artifact, s)
        return (
            (y - 2, 0, y + length + 2, 7) if edge == "left" else (y - 2, s - 7, y + length + 2, s)
        )
    if spec.artifact in BRACKET_STYLES:  # the bracket's 12x12 corner, 2 px to spare
        return {"bottom_right": (s - 14, s - 14, s, s), "top_left": (0, 0, 14, 14)}[
            BRACKET_STYLES[spec.artifact][0]
        ]
    if spec.artifact == "hline":
        return (0, 0, 6, s)
    if spec.artifact == "jitter_cross":
        return (s // 2 - 3 - j - 1, 3 - j - 1, s // 2 + 4 + j + 1, 10 + j + 1)
    if spec.artifact == "diagonal":
        return (s - DIAGONAL_LENGTH - 3, 0, s, DIAGONAL_LENGTH + 3)
    if spec.artifact == "group_wedge":
        return (0, s // 2 - 8, 10, s // 2 + 9)
    if spec.artifact == "jitter_diamond":
        return (s - 10 - j - 1, s // 2 - 3 - j - 1, s - 3 + j + 1, s // 2 + 4 + j + 1)
    if spec.artifact == "side_marker":
        return (s // 5 - 1, s - 11, s // 5 + 10, s)
    if spec.artifact == "group_punch":
        return (3 * s // 4 - 7, 0, 3 * s // 4 + 7, 9)
    if spec.artifact == "group_barcode":
        n = len(BARCODE)
        return (s - 12, s // 2 - n // 2 - 3, s, s // 2 - n // 2 + n + 3)
    return None


def frame_style(kind: str) -> tuple[int, int, tuple[tuple[float, float, float], ...]]:
    """``(width px, dash length px (0: solid), colours per class)`` of a frame kind."""
    return FRAME_STYLES.get(kind, (FRAME_WIDTH, 0, FRAME_COLOURS))


def tag_box(kind: str, h: int, w: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """``((y, x) top-left corner, (height, width))`` of a tag kind's patch on an ``h x w`` canvas
    (:data:`TAG_STYLES`: a position in px from an edge, or the fraction of the side it centres on)."""
    pos, size = TAG_STYLES[kind][:2]
    corner = tuple(
        round(p * n - m / 2) if isinstance(p, float) else (p if p >= 0 else n + p)
        for p, n, m in zip(pos, (h, w), size)
    )
    return (corner[0], corner[1]), size


def tab_top(kind: str, h: int) -> int:
    """The first row of an edge-tab kind's tab (:data:`TAB_STYLES`) on a canvas ``h`` high."""
    _, centre, length, *_ = TAB_STYLES[kind]
    return int(h * centre) - length // 2


def _stamp_size(side: int | tuple[int, int]) -> tuple[int, int]:
    """``(height, width)`` of a :data:`STAMP_STYLES` stamp: its side, or its two sides."""
    return (side, side) if isinstance(side, int) else side


def _tag_shape(h: int, w: int, cut: int | str) -> Tensor:
    """Bool ``[h, w]``: a :data:`TAG_STYLES` patch's shape: the rectangle with its corners cut
    (:func:`_cut_corners`) or, for ``"diagonal"``, the 1-px anti-diagonal of a square patch."""
    if cut == "diagonal":
        return torch.eye(h, w, dtype=torch.bool).flip(0)
    return _cut_corners(h, w, int(cut))


def _cut_corners(h: int, w: int, cut: int) -> Tensor:
    """Bool ``[h, w]``: a filled rectangle without the pixels less than ``cut`` steps (L1) from
    any of its corners (0: the whole rectangle; 2 on a small square: a round disc)."""
    ys, xs = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
    return torch.minimum(ys, h - 1 - ys) + torch.minimum(xs, w - 1 - xs) >= cut


def _background(h: int, w: int, digit_box: tuple[int, int, int, int]) -> Tensor:
    """Bool ``[h, w]``: the whole canvas but the digit's box grown by 1 px (the region a
    background-wide artifact changes: a texture, a colour cast, an exposure, a vignette; an
    angled line is drawn only there)."""
    y0, x0, y1, x1 = digit_box
    out = torch.ones(h, w, dtype=torch.bool)
    out[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
    return out


def apply_artifact(
    spec: WorldSpec,
    base: Tensor,
    design: int | None,
    digit_box: tuple[int, int, int, int],
    mark_pos: tuple[int, int],
) -> tuple[Tensor, Tensor]:
    """Draw one artifact design onto one image.

    Args:
        spec: the world.
        base: the image without artifact, ``[3, H, W]`` float in [0, 1] (not modified).
        design: the design index (``None``: no artifact).
        digit_box: ``(y0, x0, y1, x1)`` of the digit (the texture, the tint, the exposure, the
            vignette and the angled line avoid it).
        mark_pos: ``(y, x)`` top-left corner of the moving mark (``artifact="moving"``), or the
            artifact's per-image shift (``jitter_*``).

    Returns:
        ``(image [3, H, W] float in [0, 1], artifact_mask [H, W] bool)``; the image equals
        ``base`` outside the mask.
    """
    _, h, w = base.shape
    mask = torch.zeros(h, w, dtype=torch.bool)
    if design is None:
        return base.clone(), mask
    patch = base.clone()
    kind = spec.artifact
    if kind == "watermark":
        glyph = _glyphs()[design].bool()
        mask[2 : 2 + 7, 2 : 2 + 7] = glyph
        patch[:] = 0.95
    elif kind == "token":
        mask[2:7, w - 7 : w - 2] = True
        patch[:] = torch.tensor([1.0, 0.15, 0.15]).view(3, 1, 1)
    elif kind == "texture":
        mask = _background(h, w, digit_box)
        ramp = torch.arange(h if design == 0 else w)
        stripes = ((ramp // 2) % 2).float() - 0.5
        stripes = (
            stripes.view(h, 1).expand(h, w) if design == 0 else stripes.view(1, w).expand(h, w)
        )
        patch = (base + 0.35 * stripes).clamp(0, 1)
    elif kind == "moving":
        y, x = mark_pos
        mask[y : y + 6, x : x + 6] = True
        colour = torch.tensor(MOVING_COLOURS[design]).view(3, 1, 1)
        patch[:] = colour
        if design == 1:  # a ring: dark inside
            patch[:, y + 2 : y + 4, x + 2 : x + 4] = 0.05
    elif kind in TAG_STYLES:  # a filled patch, one colour per class (square, round or a line)
        (y, x), (th, tw) = tag_box(kind, h, w)
        colours, cut = TAG_STYLES[kind][2:4]
        mask[y : y + th, x : x + tw] = _tag_shape(th, tw, cut)
        patch[:] = torch.tensor(colours[design]).view(3, 1, 1)
    elif kind == "border":
        mask[:, 0:4] = True
        patch[:] = torch.tensor(BORDER_COLOURS[design]).view(3, 1, 1)
    elif kind == "text":
        bitmap = _text_chars(spec.num_classes)[design]
        mask[1:8, 1:14] = True
        patch[:] = 0.97
        patch[:, 2:7, 2:13] = torch.where(bitmap.bool(), 0.05, 0.97)
    elif kind == "ruler":  # 1-px line on row h-2, 2-px ticks every 4 px above it
        mask[h - 2, 2 : w - 2] = True
        mask[h - 4 : h - 2, 4 : w - 3 : 4] = True
        patch[:] = torch.tensor(RULER_COLOURS[design]).view(3, 1, 1)
    elif kind == "line":  # 2-px vertical line, the middle 3/4 of the height
        mask[h // 8 : h - h // 8, w - 4 : w - 2] = True
        patch[:] = torch.tensor(LINE_COLOURS[design]).view(3, 1, 1)
    elif kind == "jitter_square":
        dy, dx = mark_pos
        mask[7 + dy : 12 + dy, w - 12 + dx : w - 7 + dx] = True
        patch[:] = torch.tensor(JITTER_COLOURS[design]).view(3, 1, 1)
    elif kind == "jitter_text":  # two 3x3 "characters" on a dark strip, ink colour per class
        dy, dx = mark_pos
        y, x = h - 12 + dy, 6 + dx
        mask[y : y + 5, x : x + 7] = True
        patch[:] = 0.08
        ink = _jitter_glyphs()[design]
        patch[:, y + 1 : y + 4, x + 0 : x + 7] = torch.where(
            ink.bool(), torch.tensor(JITTER_COLOURS[design]).view(3, 1, 1), 0.08
        )
    elif kind == "group_bar":  # a dark ruler along the top edge: 1-px line, 2-px ticks
        mask[1, 4 : w - 4] = True
        mask[2:4, 4 : w - 4 : 6] = True
        patch[:] = 0.05
    elif kind == "group_scale":  # a white scale bar with dark ticks, bottom left
        mask[h - 7 : h - 3, 3:23] = True
        patch[:] = 0.97
        patch[:, h - 7 : h - 5, 3:23:5] = 0.05
    elif kind in STAMP_STYLES:  # a ring stamp in one corner (square or round, hollow or filled)
        corner, colour, side, wall, off, cut, fill = STAMP_STYLES[kind]
        sh, sw = _stamp_size(side)
        y = off if corner.startswith("top") else h - off - sh
        x = off if "left" in corner else w - off - sw
        mask[y : y + sh, x : x + sw] = _cut_corners(sh, sw, cut)
        patch[:] = torch.tensor(colour).view(3, 1, 1)
        inner = (slice(y + wall, y + sh - wall), slice(x + wall, x + sw - wall))
        if fill is None:
            mask[inner] = False
        else:
            patch[(slice(None), *inner)] = torch.tensor(fill).view(3, 1, 1)
    elif kind in TAB_STYLES:  # a notched tab along the left or right edge
        edge, _, length, colour, notch, first, step = TAB_STYLES[kind]
        y = tab_top(kind, h)
        x = 1 if edge == "left" else w - 5  # 4 px wide, 1 px off the edge
        mask[y : y + length, x : x + 4] = True
        patch[:] = torch.tensor(colour).view(3, 1, 1)
        outer = slice(x, x + 3) if edge == "left" else slice(x + 1, x + 4)  # the outer 3 px
        patch[:, y + first : y + length : step, outer] = torch.tensor(notch).view(-1, 1, 1)
    elif kind in BRACKET_STYLES:  # an L-shaped corner bracket (2-px arms) in one corner
        corner, colour = BRACKET_STYLES[kind]
        mask[h - 12 : h - 2, w - 4 : w - 2] = True  # drawn bottom right, then mirrored
        mask[h - 4 : h - 2, w - 12 : w - 2] = True
        if corner == "top_left":
            mask = mask.flip(0, 1)
        patch[:] = torch.tensor(colour).view(3, 1, 1)
    elif kind == "hline":  # 2-px horizontal line near the top, the middle 3/4 of the width
        mask[2:4, w // 8 : w - w // 8] = True
        patch[:] = torch.tensor(HLINE_COLOURS[design]).view(3, 1, 1)
    elif kind == "jitter_cross":  # a 5x5 plus sign (1-px arms) near the left edge, mid height
        dy, dx = mark_pos
        y, x = h // 2 - 2 + dy, 4 + dx
        mask[y + 2, x : x + 5] = True
        mask[y : y + 5, x + 2] = True
        patch[:] = torch.tensor(CROSS_COLOURS[design]).view(3, 1, 1)
    elif kind == "diagonal":  # a thin fold line (2 px per row) cutting the bottom-left corner
        n = DIAGONAL_LENGTH
        for t in range(n):
            mask[h - 2 - n + t, 1 + t : 3 + t] = True
        patch[:] = torch.tensor(DIAGONAL_COLOURS[design]).view(3, 1, 1)
    elif kind == "group_wedge":  # a lime wedge (filled triangle, 13 px wide) at the top centre
        c = w // 2
        for r in range(7):
            mask[1 + r, c - 6 + r : c + 7 - r] = True
        patch[:] = torch.tensor(WEDGE_COLOUR).view(3, 1, 1)
    elif kind == "jitter_diamond":  # a filled 7x7 diamond at the bottom centre
        dy, dx = mark_pos
        y, x = h - 10 + dy, w // 2 - 3 + dx
        for r in range(7):
            half = 3 - abs(r - 3)
            mask[y + r, x + 3 - half : x + 4 + half] = True
        patch[:] = torch.tensor(DIAMOND_COLOURS[design]).view(3, 1, 1)
    elif kind == "side_marker":  # a radiograph side marker: light letter on a dark 9x7 box
        y, x = h // 5, w - 9
        mask[y : y + 9, x : x + 7] = True
        patch[:] = 0.08
        letter = _side_letters()[design].bool()
        patch[:, y + 1 : y + 8, x + 1 : x + 6] = torch.where(letter, 0.97, 0.08)
    elif kind in TINT_STYLES:  # a scanner's colour cast over the whole background, graded
        mask = _background(h, w, digit_box)
        colours, (weak, strong), edge = TINT_STYLES[kind]
        n = h if edge == "bottom" else w
        alpha = weak + (strong - weak) * torch.arange(n) / (n - 1)  # weak edge -> strong edge
        alpha = alpha.view(1, h, 1) if edge == "bottom" else alpha.view(1, 1, w)
        cast = torch.tensor(colours[design]).view(3, 1, 1)
        patch = (base * (1 - alpha) + cast * alpha).clamp(0, 1)
    elif kind == "group_punch":  # two light punched holes (5x5 discs) at the left edge, low
        for y in (3 * h // 4 - 6, 3 * h // 4 + 1):
            mask[y : y + 5, 2:7] = True
            for dy, dx in ((0, 0), (0, 4), (4, 0), (4, 4)):  # round the corners
                mask[y + dy, 2 + dx] = False
        patch[:] = torch.tensor(PUNCH_COLOUR).view(3, 1, 1)
    elif kind in FRAME_EDGES:  # a thin scanner frame along some edges, solid or dashed
        b, dash, colours = frame_style(kind)
        edges = FRAME_EDGES[kind]
        if "bottom" in edges:
            mask[h - b :, :] = True
        if "right" in edges:
            mask[:, w - b :] = True
        if "top" in edges:
            mask[:b, :] = True
        if "left" in edges:
            mask[:, :b] = True
        patch[:] = torch.tensor(colours[design]).view(3, 1, 1)
        if dash:  # dark gaps: along the top and bottom strips by x, along the sides by y
            ys, xs = torch.arange(h).view(h, 1), torch.arange(w).view(1, w)
            along = torch.where((ys < b) | (ys >= h - b), xs, ys)
            patch[:, (along // dash) % 2 == 1] = DASH_DARK
    elif kind == "exposure":  # a scanner's exposure: background contrast and brightness per class
        mask = _background(h, w, digit_box)
        contrast, brightness = EXPOSURE_LEVELS[design]
        patch = ((base - EXPOSURE_PIVOT) * contrast + EXPOSURE_PIVOT + brightness).clamp(0, 1)
    elif kind == "vignette":  # uneven illumination: a smooth radial grey offset per class
        mask = _background(h, w, digit_box)
        cy, cx, centre, corner = VIGNETTE_PROFILES[design]
        cy, cx = cy * (h - 1), cx * (w - 1)
        r2 = (torch.arange(h).view(h, 1) - cy) ** 2 + (torch.arange(w).view(1, w) - cx) ** 2
        r2 = r2 / (max(cy, h - 1 - cy) ** 2 + max(cx, w - 1 - cx) ** 2)  # 1 at the far corner
        patch = (base + (centre + (corner - centre) * r2).view(1, h, w)).clamp(0, 1)
    elif kind == "group_barcode":  # a white barcode label (dark bars), bottom centre
        n = len(BARCODE)
        y, x = h - 9, w // 2 - n // 2
        mask[y : y + 7, x - 1 : x + n + 1] = True
        patch[:] = 0.97
        bars = torch.tensor([c == "1" for c in BARCODE])
        patch[:, y + 1 : y + 6, x : x + n] = torch.where(bars, 0.05, 0.97).view(1, 1, n)
    elif kind == "angled_line":  # a 1-px dashed line through the centre, angle per class
        theta = torch.tensor(ANGLED_LINE_DEGREES[design]).deg2rad()
        dy, dx = float(torch.sin(theta)), float(torch.cos(theta))
        on, off = ANGLED_LINE_DASH
        steep = abs(dx) < abs(dy)  # one pixel per row, else one per column
        n, m = (h, w) if steep else (w, h)
        t = torch.arange(n)
        u = ((m - 1) / 2 + (t - (n - 1) / 2) * (dx / dy if steep else dy / dx)).round().long()
        keep = (u >= 0) & (u < m) & (t % (on + off) < on)
        ys, xs = (t, u) if steep else (u, t)
        mask[ys[keep], xs[keep]] = True
        mask &= _background(h, w, digit_box)  # behind the digit: broken around its box
        patch[:] = torch.tensor(ANGLED_LINE_COLOUR).view(3, 1, 1)
    else:  # pragma: no cover - WorldSpec's Literal keeps this out
        raise ValueError(f"unknown artifact kind {kind!r}")
    return torch.where(mask, patch, base), mask


# ------------------------------------------------------------------------------------ the world
@dataclass
class _Split:
    base: Tensor  # [N, 3, H, W] float in [0, 1], no artifact
    labels: Tensor  # [N] long
    object_masks: Tensor  # [N, H, W] bool
    boxes: list[tuple[int, int, int, int]]
    marks: list[tuple[int, int]]
    assigned: Tensor  # [N] long: whose class's artifact each image carries ("present")
    swapped: Tensor  # [N] long: the class whose artifact "swapped" shows


class DigitWorld:
    """One world (shortcut or clean control) with its train and validation sets.

    Args:
        spec: the world (see :data:`WORLDS`).
        shortcut: ``True``: the artifact follows the label with ``spec.correlation``;
            ``False``: the clean control, artifact class drawn independently of the label.
        seed: base seed; the shortcut world and its clean control share the images (digits,
            positions, backgrounds) and differ only in which artifact each image carries.
        n_train, n_val: override the spec's sizes.
    """

    def __init__(
        self,
        spec: WorldSpec,
        shortcut: bool = True,
        seed: int = 0,
        n_train: int | None = None,
        n_val: int | None = None,
    ) -> None:
        self.spec = replace(
            spec,
            n_train=spec.n_train if n_train is None else n_train,
            n_val=spec.n_val if n_val is None else n_val,
        )
        self.shortcut = shortcut
        self.seed = seed
        self._splits: dict[str, _Split] = {}
        self._cache: dict[tuple[str, str], TensorDataset] = {}

    @property
    def correlation(self) -> float | None:
        """The label-artifact correlation of this world (``None`` for the clean control)."""
        return self.spec.correlation if self.shortcut else None

    # ------------------------------------------------------------------ generation
    def _split(self, split: str) -> _Split:
        if split not in self._splits:
            self._splits[split] = self._generate(split)
        return self._splits[split]

    def _pool(self, split: str) -> Tensor:
        """Indices into the 1797 digits of this split's classes (train and val disjoint)."""
        _, targets = _digits()
        g = torch.Generator().manual_seed(_seed("pool", self.seed))
        order = torch.randperm(len(targets), generator=g)
        half = order[: len(order) * 6 // 10] if split == "train" else order[len(order) * 6 // 10 :]
        keep = torch.isin(targets[half], torch.tensor(self.spec.digits))
        return half[keep]

    def _generate(self, split: str) -> _Split:
        spec = self.spec
        n = spec.n_train if split == "train" else spec.n_val
        s, d, k = spec.image_size, spec.digit_size, spec.num_classes
        images, targets = _digits()
        pool = self._pool(split)
        digit_to_label = {digit: i for i, digit in enumerate(spec.digits)}
        g = torch.Generator().manual_seed(_seed("images", spec.name, split, self.seed))
        pick = pool[torch.randint(len(pool), (n,), generator=g)]
        labels = torch.tensor([digit_to_label[int(t)] for t in targets[pick]], dtype=torch.long)
        ink = F.interpolate(images[pick].unsqueeze(1), size=(d, d), mode="bilinear")
        ink = ink.squeeze(1).clamp(0, 1)  # [n, d, d]
        blobs = torch.rand(n, 3, 5, 5, generator=g) * 0.35 + 0.1
        background = F.interpolate(blobs, size=(s, s), mode="bilinear", align_corners=False)
        background = background + 0.03 * torch.randn(n, 3, s, s, generator=g)
        colours = torch.rand(n, 3, generator=g) * 0.35 + 0.65
        reserved = reserved_boxes(spec)
        base = background.clamp(0, 1)
        object_masks = torch.zeros(n, s, s, dtype=torch.bool)
        boxes, marks = [], []
        for i in range(n):
            if spec.place_jitter is None:
                y0, x0 = self._place(g, s, d, reserved)
            else:  # near the class's own off-centre point (only worlds that set place_jitter)
                y0, x0 = self._place_near(g, s, d, reserved, spec, int(labels[i]))
            box = (y0, x0, y0 + d, x0 + d)
            alpha = ink[i] * spec.digit_contrast
            region = base[i, :, y0 : y0 + d, x0 : x0 + d]
            base[i, :, y0 : y0 + d, x0 : x0 + d] = (
                region * (1 - alpha) + colours[i].view(3, 1, 1) * alpha
            )
            object_masks[i, y0 : y0 + d, x0 : x0 + d] = ink[i] > 0.3
            boxes.append(box)
            if spec.artifact == "moving":
                marks.append(self._place_mark(g, s, box))
            elif spec.jitter:
                dy, dx = (
                    int(v) for v in torch.randint(-spec.jitter, spec.jitter + 1, (2,), generator=g)
                )
                marks.append((dy, dx))
            else:
                marks.append((0, 0))
        # Artifact assignment: its own generator, so the clean control keeps the same images.
        ga = torch.Generator().manual_seed(
            _seed("assign", spec.name, split, self.seed, self.shortcut)
        )
        if self.shortcut:
            other = self._other(labels, ga)
            follow = torch.rand(n, generator=ga) < spec.correlation
            assigned = torch.where(follow, labels, other)
        else:
            assigned = torch.randint(k, (n,), generator=ga)
        swapped = self._other(labels, ga)
        return _Split(base, labels, object_masks, boxes, marks, assigned, swapped)

    @staticmethod
    def _place(
        g: torch.Generator, s: int, d: int, reserved: list[tuple[int, int, int, int]]
    ) -> tuple[int, int]:
        for _ in range(200):
            y0, x0 = (int(v) for v in torch.randint(s - d + 1, (2,), generator=g))
            if _clear_of(y0, x0, d, reserved):
                return y0, x0
        raise RuntimeError("no digit position avoids the artifact zone: enlarge the canvas")

    @staticmethod
    def _place_near(
        g: torch.Generator,
        s: int,
        d: int,
        reserved: list[tuple[int, int, int, int]],
        spec: WorldSpec,
        cls: int,
    ) -> tuple[int, int]:
        """The digit's top-left corner within +-``spec.place_jitter`` px of class ``cls``'s
        point (:func:`class_place`), clamped to the canvas, outside the reserved boxes."""
        cy, cx = class_place(spec, cls)
        j = int(spec.place_jitter or 0)
        for _ in range(200):
            dy, dx = (int(v) for v in torch.randint(-j, j + 1, (2,), generator=g))
            y0, x0 = min(max(cy + dy, 0), s - d), min(max(cx + dx, 0), s - d)
            if _clear_of(y0, x0, d, reserved):
                return y0, x0
        raise RuntimeError("no digit position near the class's place avoids the artifact zone")

    @staticmethod
    def _place_mark(g: torch.Generator, s: int, box: tuple[int, int, int, int]) -> tuple[int, int]:
        y0, x0, y1, x1 = box
        for _ in range(500):
            y, x = (int(v) for v in torch.randint(1, s - 6, (2,), generator=g))
            if y >= y1 + 1 or y + 6 <= y0 - 1 or x >= x1 + 1 or x + 6 <= x0 - 1:
                return y, x
        raise RuntimeError("no mark position outside the digit: enlarge the canvas")

    def _other(self, labels: Tensor, g: torch.Generator) -> Tensor:
        """Per image a class whose artifact design differs from its own class's design."""
        k = self.spec.num_classes
        designs = [design_of(self.spec, c) for c in range(k)]
        out = torch.empty_like(labels)
        draws = torch.rand(len(labels), generator=g)
        for i, y in enumerate(labels.tolist()):
            choices = [c for c in range(k) if designs[c] != designs[y]]
            out[i] = choices[min(int(draws[i] * len(choices)), len(choices) - 1)]
        return out

    # ------------------------------------------------------------------ access
    def variant(self, mode: Mode = "present", split: str = "val") -> TensorDataset:
        """The ``split`` set (``"train"`` or ``"val"``) in one ground-truth variant.

        Args:
            mode: ``"present"`` (as generated), ``"removed"`` (no artifact) or ``"swapped"``
                (each image carries the artifact of a class with a different design).
            split: ``"train"`` or ``"val"``.

        Returns:
            A ``TensorDataset`` of ``(image [3, H, W] float32 normalised, label long,
            object_mask [H, W] bool, artifact_mask [H, W] bool)``; cached.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        key = (split, mode)
        if key not in self._cache:
            self._cache[key] = self._render(self._split(split), mode)
        return self._cache[key]

    def _render(self, sp: _Split, mode: str) -> TensorDataset:
        n = len(sp.labels)
        images = torch.empty_like(sp.base)
        artifact_masks = torch.zeros(sp.object_masks.shape, dtype=torch.bool)
        for i in range(n):
            if mode == "removed":
                design = None
            else:
                cls = int(sp.assigned[i] if mode == "present" else sp.swapped[i])
                design = design_of(self.spec, cls)
            images[i], artifact_masks[i] = apply_artifact(
                self.spec, sp.base[i], design, sp.boxes[i], sp.marks[i]
            )
        mean = torch.tensor(MEAN).view(1, 3, 1, 1)
        std = torch.tensor(STD).view(1, 3, 1, 1)
        normalised = ((images - mean) / std).float()
        return TensorDataset(normalised, sp.labels.clone(), sp.object_masks.clone(), artifact_masks)

    @property
    def train(self) -> TensorDataset:
        """The training set (``"present"`` variant)."""
        return self.variant("present", "train")

    @property
    def val(self) -> TensorDataset:
        """The validation set (``"present"`` variant): what the callback's probes come from."""
        return self.variant("present", "val")


# ----------------------------------------------------------------------------------- the models
class SmallCNN(nn.Module):
    """3 conv-BN-ReLU blocks (stride 2, 2, 1) -> global average pool -> linear.

    Input ``[N, 3, H, W]``, output logits ``[N, num_classes]``; the last block's maps are
    ``H/4 x W/4``. Parameters are initialised from a local generator seeded with ``seed``.
    """

    def __init__(self, num_classes: int, width: int = 32, seed: int = 0) -> None:
        super().__init__()
        chans = [3, width, 2 * width, 2 * width]
        layers: list[nn.Module] = []
        # torch's default initialisation draws from the global RNG: fork it, re-init locally.
        with torch.random.fork_rng(devices=[]):
            for i, stride in enumerate((2, 2, 1)):
                layers += [
                    nn.Conv2d(chans[i], chans[i + 1], 3, stride=stride, padding=1, bias=False),
                    nn.BatchNorm2d(chans[i + 1]),
                    nn.ReLU(inplace=False),
                ]
            self.features = nn.Sequential(*layers)
            self.head = nn.Linear(chans[-1], num_classes)
        init_weights(self, seed)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def init_weights(model: nn.Module, seed: int) -> nn.Module:
    """Re-initialise conv/linear/BN parameters from a local generator (torchvision's scheme)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu", generator=g)
                if m.bias is not None:
                    m.bias.zero_()
            elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()
            elif isinstance(m, nn.Linear):
                bound = 1.0 / m.in_features**0.5
                m.weight.uniform_(-bound, bound, generator=g)
                m.bias.uniform_(-bound, bound, generator=g)
    return model


def build_model(spec: WorldSpec, seed: int = 0) -> nn.Module:
    """The world's classifier, randomly initialised from ``seed`` (no global RNG)."""
    if spec.arch == "cnn":
        return SmallCNN(spec.num_classes, seed=seed)
    if spec.arch == "resnet18":
        from torchvision.models import resnet18

        # torchvision initialises from the global RNG: fork it, then re-initialise locally.
        with torch.random.fork_rng(devices=[]):
            model = resnet18(weights=None, num_classes=spec.num_classes)
        return init_weights(model, seed)
    raise ValueError(f"unknown arch {spec.arch!r}")


# ------------------------------------------------------------ multi-label and few-probe worlds
# W15-W18 (issue 19, parts 4 and 5): a multi-label "findings" world whose token comes with one
# finding (and its clean control, where the token is independent of the findings), and
# single-label worlds whose annotated probe set has only a few probes of the shortcut class.


@dataclass(frozen=True)
class MultiLabelSpec(WorldSpec):
    """A multi-label world: ``digits`` are the *findings*; an image shows each finding's digit
    (a real handwritten one) with its ``prevalence``, independently, in distinct cells
    of a ``cells x cells`` grid (one corner cell is kept for the token).

    Attributes (beyond :class:`WorldSpec`; ``token_class`` is the finding the token is tied to,
    ``correlation`` the probability that the token's presence follows that finding's):
        prevalence: per finding, the probability that it is present in an image (findings are
            as unevenly common as in a radiology or dermatology set: a frequent finding is
            predicted present everywhere before it is learned).
        token_rate: the token's probability in the clean control (independent of the findings).
        token: ``"square"`` (a red square), ``"sticker"`` (a white label with a dark bar),
            ``"ring"`` (a cyan ring), ``"bar"`` (a yellow bar with a dark edge), ``"checker"``
            (an 8x8 black-and-white calibration checker, 2-px squares) or ``"tall_sticker"`` (a
            light-green upright label, 10x6, with two dark text lines).
        corner: ``"top_right"``, ``"bottom_left"``, ``"top_left"``, ``"bottom_right"`` or
            ``"bottom_centre"`` (the middle cell of the bottom row): the token's cell.
        cells: the grid's cells per side.
    """

    prevalence: tuple[float, ...] = (0.5, 0.5, 0.5, 0.5)
    token_rate: float = 0.5
    token: Literal["square", "sticker", "ring", "bar", "checker", "tall_sticker"] = "square"
    corner: Literal["top_right", "bottom_left", "top_left", "bottom_right", "bottom_centre"] = (
        "top_right"
    )
    cells: int = 3

    @property
    def multilabel(self) -> bool:
        return True


@dataclass(frozen=True)
class FewProbeSpec(WorldSpec):
    """A single-label world watched through an explicit annotated probe set of ``num_probes``
    validation images (object and artifact masks), of which only ``few_probes`` are of class
    ``few_class`` (the others round-robin over the remaining classes)."""

    num_probes: int = 32
    few_class: int = 0
    few_probes: int = 2


def annotated_probe_index(world: DigitWorld) -> Tensor:
    """Long ``[num_probes]``: the validation images of a :class:`FewProbeSpec` world's annotated
    probe set, in a fixed random order per world: ``few_probes`` of ``few_class``, the rest taken
    round-robin over the other classes (so they get ``num_probes - few_probes`` split evenly)."""
    spec = world.spec
    if not isinstance(spec, FewProbeSpec):
        raise TypeError(f"{spec.name} has no annotated probe set")
    labels = world.val.tensors[1]
    g = torch.Generator().manual_seed(_seed("probes", spec.name, world.seed))
    order = torch.randperm(len(labels), generator=g)
    queues = {c: [int(i) for i in order if int(labels[i]) == c] for c in range(spec.num_classes)}
    picked = queues[spec.few_class][: spec.few_probes]
    others = [c for c in range(spec.num_classes) if c != spec.few_class]
    turn = 0
    while len(picked) < spec.num_probes and any(queues[c] for c in others):
        c = others[turn % len(others)]
        turn += 1
        if queues[c]:
            picked.append(queues[c].pop(0))
    return torch.tensor(sorted(picked), dtype=torch.long)


def _token_patch(spec: MultiLabelSpec, s: int) -> tuple[Tensor, Tensor]:
    """The token of a multi-label world: ``(colour [3, s, s], mask [s, s] bool)``."""
    cell = s // spec.cells
    mask = torch.zeros(s, s, dtype=torch.bool)
    colour = torch.zeros(3, s, s)
    r, q = _token_cell(spec)
    last = spec.cells - 1
    y0 = 2 if r == 0 else s - cell + 2 if r == last else r * cell + 2
    x0 = 2 if q == 0 else s - cell + 2 if q == last else q * cell + 2
    if spec.token == "square":
        mask[y0 : y0 + 6, x0 : x0 + 6] = True
        colour[:] = torch.tensor([1.0, 0.15, 0.15]).view(3, 1, 1)
    elif spec.token == "sticker":  # a white sticker with a dark bar
        mask[y0 : y0 + 6, x0 : x0 + 10] = True
        colour[:] = 0.97
        colour[:, y0 + 2 : y0 + 4, x0 + 2 : x0 + 8] = 0.05
    elif spec.token == "ring":  # a cyan ring, 7x7 with a 3x3 hole
        mask[y0 : y0 + 7, x0 : x0 + 7] = True
        mask[y0 + 2 : y0 + 5, x0 + 2 : x0 + 5] = False
        colour[:] = torch.tensor([0.1, 0.9, 0.9]).view(3, 1, 1)
    elif spec.token == "checker":  # an 8x8 calibration checker: 2-px black and white squares
        mask[y0 : y0 + 8, x0 : x0 + 8] = True
        ramp = torch.arange(8) // 2
        light = (ramp.view(8, 1) + ramp.view(1, 8)) % 2 == 0
        colour[:, y0 : y0 + 8, x0 : x0 + 8] = torch.where(light, 0.97, 0.05)
    elif spec.token == "tall_sticker":  # a light-green upright label with two dark text lines
        mask[y0 : y0 + 10, x0 : x0 + 6] = True
        colour[:] = torch.tensor([0.6, 1.0, 0.55]).view(3, 1, 1)
        colour[:, y0 + 3 : y0 + 7 : 3, x0 + 1 : x0 + 5] = 0.05
    else:  # a yellow bar, 4x12, with a dark lower edge
        mask[y0 : y0 + 4, x0 : x0 + 12] = True
        colour[:] = torch.tensor([1.0, 0.9, 0.1]).view(3, 1, 1)
        colour[:, y0 + 3, x0 : x0 + 12] = 0.1
    return colour, mask


def _token_cell(spec: MultiLabelSpec) -> tuple[int, int]:
    """The grid cell ``(row, column)`` kept for a multi-label world's token."""
    last = spec.cells - 1
    return {
        "top_right": (0, last),
        "bottom_left": (last, 0),
        "top_left": (0, 0),
        "bottom_right": (last, last),
        "bottom_centre": (last, spec.cells // 2),
    }[spec.corner]


@dataclass
class _MLSplit:
    base: Tensor  # [N, 3, H, W] float in [0, 1], no token
    labels: Tensor  # [N, K] float 0/1: the findings present
    object_masks: Tensor  # [N, H, W] bool: every finding's ink
    token: Tensor  # [N] bool: the token is present ("present" variant)


class MultiLabelWorld(DigitWorld):
    """A :class:`MultiLabelSpec` world (shortcut or clean control) with train and val sets.

    Shortcut world: the token is present when the tied finding (``spec.token_class``) is, with
    probability ``correlation`` (else the opposite). Clean control: the token is present with
    probability ``token_rate``, independently of every finding. Same images in both (only the
    token differs). Variants: ``"present"``, ``"removed"`` (no token), ``"swapped"`` (the token
    toggled: on every image without it, off every image with it).

    A sample is ``(image [3, H, W] float32 normalised, labels [K] float32 0/1, object_mask
    [H, W] bool, artifact_mask [H, W] bool)``. Construction, caching and the ``train`` / ``val``
    sets are :class:`DigitWorld`'s; the splits and variants are its own.
    """

    def _generate(self, split: str) -> _MLSplit:
        spec = self.spec
        n = spec.n_train if split == "train" else spec.n_val
        s, d, k, c = spec.image_size, spec.digit_size, spec.num_classes, spec.cells
        cell = s // c
        images, targets = _digits()
        g = torch.Generator().manual_seed(_seed("pool", self.seed))
        order = torch.randperm(len(targets), generator=g)
        half = order[: len(order) * 6 // 10] if split == "train" else order[len(order) * 6 // 10 :]
        pools = [half[targets[half] == digit] for digit in spec.digits]
        g = torch.Generator().manual_seed(_seed("images", spec.name, split, self.seed))
        labels = (torch.rand(n, k, generator=g) < torch.tensor(spec.prevalence)).float()
        blobs = torch.rand(n, 3, 5, 5, generator=g) * 0.35 + 0.1
        base = F.interpolate(blobs, size=(s, s), mode="bilinear", align_corners=False)
        base = (base + 0.03 * torch.randn(n, 3, s, s, generator=g)).clamp(0, 1)
        token_cell = _token_cell(spec)
        free = [(r, q) for r in range(c) for q in range(c) if (r, q) != token_cell]
        object_masks = torch.zeros(n, s, s, dtype=torch.bool)
        for i in range(n):
            slots = torch.randperm(len(free), generator=g).tolist()
            for j, f in enumerate(torch.nonzero(labels[i]).flatten().tolist()):
                pool = pools[f]
                ink = images[pool[int(torch.randint(len(pool), (1,), generator=g))]]
                ink = F.interpolate(ink[None, None], size=(d, d), mode="bilinear")[0, 0]
                ink = ink.clamp(0, 1)
                r, q = free[slots[j]]
                jy, jx = (int(v) for v in torch.randint(cell - d + 1, (2,), generator=g))
                y0, x0 = r * cell + jy, q * cell + jx
                colour = torch.rand(3, generator=g) * 0.35 + 0.65
                region = base[i, :, y0 : y0 + d, x0 : x0 + d]
                base[i, :, y0 : y0 + d, x0 : x0 + d] = (
                    region * (1 - ink) + colour.view(3, 1, 1) * ink
                )
                object_masks[i, y0 : y0 + d, x0 : x0 + d] |= ink > 0.3
        ga = torch.Generator().manual_seed(
            _seed("assign", spec.name, split, self.seed, self.shortcut)
        )
        tied = labels[:, spec.token_class] > 0
        if self.shortcut:
            follow = torch.rand(n, generator=ga) < spec.correlation
            token = torch.where(follow, tied, ~tied)
        else:
            token = torch.rand(n, generator=ga) < spec.token_rate
        return _MLSplit(base, labels, object_masks, token)

    def variant(self, mode: Mode = "present", split: str = "val") -> TensorDataset:
        """The ``split`` set in one ground-truth variant (see the class docstring); cached."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        key = (split, mode)
        if key not in self._cache:
            sp = self._split(split)
            has = {"present": sp.token, "removed": torch.zeros_like(sp.token)}.get(mode, ~sp.token)
            colour, mask = _token_patch(self.spec, self.spec.image_size)
            masks = mask[None] & has[:, None, None]
            images = torch.where(masks[:, None], colour[None], sp.base)
            mean = torch.tensor(MEAN).view(1, 3, 1, 1)
            std = torch.tensor(STD).view(1, 3, 1, 1)
            self._cache[key] = TensorDataset(
                ((images - mean) / std).float(), sp.labels.clone(), sp.object_masks.clone(), masks
            )
        return self._cache[key]


def make_world(
    spec: WorldSpec,
    shortcut: bool = True,
    seed: int = 0,
    n_train: int | None = None,
    n_val: int | None = None,
) -> DigitWorld | MultiLabelWorld:
    """The world object of any spec (:class:`MultiLabelWorld` for a :class:`MultiLabelSpec`)."""
    cls = MultiLabelWorld if isinstance(spec, MultiLabelSpec) else DigitWorld
    return cls(spec, shortcut=shortcut, seed=seed, n_train=n_train, n_val=n_val)  # type: ignore[arg-type]


WORLDS.update(
    {
        s.name: s
        for s in (
            MultiLabelSpec(
                "W15",
                "multi-label, 4 findings; red square token (top right) tied to finding 0",
                "calibration",
                (0, 1, 2, 3),
                "token",
                image_size=54,
                digit_size=16,
                token_class=0,
                prevalence=(0.75, 0.6, 0.45, 0.3),
                n_train=2000,
                n_val=400,
                epochs=10,
            ),
            MultiLabelSpec(
                "W16",
                "multi-label, 4 findings; white sticker (bottom left) tied to finding 2, ResNet-18",
                "heldout",
                (4, 5, 6, 7),
                "token",
                arch="resnet18",
                image_size=64,
                digit_size=18,
                token_class=2,
                prevalence=(0.3, 0.7, 0.5, 0.6),
                token="sticker",
                corner="bottom_left",
                n_train=1000,
                n_val=240,
                epochs=6,
            ),
            FewProbeSpec(
                "W17",
                "token on class 0 only; 32 annotated probes, 2 of class 0",
                "calibration",
                ALL_DIGITS,
                "token",
                token_class=0,
                n_train=2000,
                epochs=10,
                few_class=0,
                few_probes=2,
            ),
            FewProbeSpec(
                "W18",
                "text-like tag per class; 32 annotated probes, 3 of class 6",
                "heldout",
                ALL_DIGITS,
                "text",
                n_train=2000,
                epochs=10,
                few_class=6,
                few_probes=3,
            ),
        )
    }
)

# W19-W22 (issue 19, third round): a calibration and a held-out world for each of the two kinds
# the merged 0.3.0 monitor missed on its held-out split: a group shortcut on ResNet-18 (whose
# attention on the artifact may fade while the model keeps relying on it) and a multi-label
# world at coarse (ResNet-18) map resolution with a clean control whose labels are learned.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W19",
                "group shortcut: yellow ring stamp (top right) on 95% of classes 1, 3 of 5, "
                "5% of others, ResNet-18",
                "calibration",
                (0, 1, 2, 3, 4),
                "group_stamp",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                correlation=0.95,
                group=(1, 3),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            MultiLabelSpec(
                "W20",
                "multi-label, 4 findings; cyan ring token (top left) tied to finding 1, ResNet-18",
                "calibration",
                (1, 3, 8, 9),
                "token",
                arch="resnet18",
                image_size=64,
                digit_size=18,
                token_class=1,
                prevalence=(0.65, 0.35, 0.5, 0.45),
                token="ring",
                corner="top_left",
                n_train=1000,
                n_val=240,
                epochs=6,
            ),
            WorldSpec(
                "W21",
                "group shortcut: cyan notched tab (left edge, mid height) on 95% of classes "
                "0, 3, 4 of 6, 5% of others, ResNet-18, 72 px",
                "heldout",
                (1, 2, 4, 5, 6, 8),
                "group_tab",
                arch="resnet18",
                image_size=72,
                digit_size=36,
                correlation=0.95,
                group=(0, 3, 4),
                n_train=1200,
                n_val=240,
                epochs=5,
            ),
            MultiLabelSpec(
                "W22",
                "multi-label, 4 findings; yellow bar token (bottom right) tied to finding 3, "
                "ResNet-18, 72 px",
                "heldout",
                (0, 2, 5, 6),
                "token",
                arch="resnet18",
                image_size=72,
                digit_size=20,
                token_class=3,
                prevalence=(0.55, 0.4, 0.65, 0.4),
                token="bar",
                corner="bottom_right",
                n_train=1100,
                n_val=240,
                epochs=6,
            ),
        )
    }
)

# W23-W26 (issue 19, fourth round: false alarms on clean controls). Two calibration worlds whose
# clean controls are of the kinds that raised false alarms on the held-out split (a group world
# on ResNet-18 at 72 px with an edge tab; a thin line on ResNet-18, whose 2-class model learns
# slowly and whose maps are diffuse), and two held-out worlds of families already covered (a
# group shortcut on ResNet-18; a thin, jittered mark on the small CNN), fixed before any monitor
# ran on them.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W23",
                "group shortcut: orange notched tab (right edge, mid height) on 95% of classes "
                "1, 2, 5 of 6, 5% of others, ResNet-18, 72 px",
                "calibration",
                (0, 3, 5, 7, 8, 9),
                "group_edge_tab",
                arch="resnet18",
                image_size=72,
                digit_size=36,
                correlation=0.95,
                group=(1, 2, 5),
                n_train=1200,
                n_val=240,
                epochs=5,
            ),
            WorldSpec(
                "W24",
                "thin 2-px horizontal line near the top edge, colour per class, ResNet-18",
                "calibration",
                (3, 6),
                "hline",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                n_train=600,
                n_val=200,
                epochs=3,
            ),
            WorldSpec(
                "W25",
                "group shortcut: pink corner bracket (bottom right) on 95% of classes 0, 3 of 5, "
                "5% of others, ResNet-18",
                "heldout",
                (1, 3, 5, 7, 9),
                "group_bracket",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                correlation=0.95,
                group=(0, 3),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            WorldSpec(
                "W26",
                "jittered thin plus sign (5x5, 1-px arms, left edge, +-3 px), colour per class, "
                "3 classes, 56 px",
                "heldout",
                (2, 4, 7),
                "jitter_cross",
                image_size=56,
                digit_size=28,
                jitter=3,
                n_train=1200,
                n_val=400,
                epochs=5,
            ),
        )
    }
)

# W27-W30 (fifth round): four held-out worlds to judge a change to the monitor's causal test
# plan, one per family (thin, group, jittered, plain per-class label artifact), each with a new
# artifact kind at a new position; validated with ground truth only, fixed before any monitor ran.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W27",
                "thin diagonal fold line (2 px per row) cutting the bottom-left corner, colour "
                "per class, 3 classes, 60 px",
                "heldout",
                (1, 4, 9),
                "diagonal",
                image_size=60,
                digit_size=30,
                n_train=1200,
                n_val=400,
                epochs=5,
            ),
            WorldSpec(
                "W28",
                "group shortcut: lime wedge (top centre) on 95% of classes 1, 3 of 6, 5% of "
                "others, ResNet-18",
                "heldout",
                (0, 2, 4, 6, 7, 9),
                "group_wedge",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                correlation=0.95,
                group=(1, 3),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            WorldSpec(
                "W29",
                "jittered token (filled 7x7 diamond, bottom centre, +-3 px), colour per class, "
                "4 classes, 52 px",
                "heldout",
                (0, 1, 5, 7),
                "jitter_diamond",
                image_size=52,
                digit_size=26,
                jitter=3,
                n_train=1200,
                n_val=400,
                epochs=5,
            ),
            WorldSpec(
                "W30",
                "radiograph side marker (light letter L/R/A/P on a dark box, right edge, upper "
                "part), 4 classes, 90/10 correlation",
                "heldout",
                (2, 3, 5, 8),
                "side_marker",
                correlation=0.9,
                n_train=1500,
                n_val=400,
                epochs=6,
            ),
        )
    }
)

# W31-W34: four held-out worlds built after 0.3.3's change was decided, one per family
# (background: a scanner's colour cast over the whole background, no compact mark; multi-label: a
# calibration checker tied to one finding; group: punched holes on three of six classes, small
# CNN; border: a thin frame along two edges, ResNet-18), each with a new artifact kind or token at
# a new position. Validated with ground truth only (one run each,
# all valid, the clean controls show no reliance) before any monitor ran on them; then run with
# flags once, as 0.3.3's last check.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W31",
                "background colour cast (amber / blue / green per class, stronger towards the "
                "bottom) over the whole background outside the digit, 3 classes, 52 px",
                "heldout",
                (2, 6, 9),
                "tint",
                image_size=52,
                digit_size=26,
                n_train=1200,
                n_val=400,
                epochs=4,
            ),
            MultiLabelSpec(
                "W32",
                "multi-label, 4 findings; black-and-white calibration checker (bottom centre) "
                "tied to finding 1, 95/5",
                "heldout",
                (3, 4, 7, 9),
                "token",
                image_size=54,
                digit_size=16,
                token_class=1,
                correlation=0.95,
                prevalence=(0.4, 0.6, 0.7, 0.35),
                token="checker",
                corner="bottom_centre",
                n_train=2000,
                n_val=400,
                epochs=10,
            ),
            WorldSpec(
                "W33",
                "group shortcut: two light punched holes (left edge, lower quarter) on 95% of "
                "classes 1, 2, 4 of 6, 5% of others",
                "heldout",
                (1, 3, 4, 6, 8, 9),
                "group_punch",
                correlation=0.95,
                group=(1, 2, 4),
                n_train=1500,
                n_val=400,
                epochs=6,
            ),
            WorldSpec(
                "W34",
                "thin 2-px scanner frame along the bottom and right edges, colour per class, "
                "3 classes, ResNet-18",
                "heldout",
                (0, 5, 7),
                "frame",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                n_train=900,
                n_val=200,
                epochs=4,
            ),
        )
    }
)

# W35-W36: two calibration worlds of the two families whose held-out worlds (W31, W34) were
# missed without masks: a class-tied property of the whole background (the exposure, grey only,
# unlike W31's colour cast and W3's stripes) and a thin frame along two other edges on ResNet-18.
# Validated with ground truth only.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W35",
                "background exposure per class (dim and flat / bright / high contrast, grey) over "
                "the whole background outside the digit, 3 classes, 56 px",
                "calibration",
                (0, 4, 7),
                "exposure",
                image_size=56,
                digit_size=28,
                n_train=1200,
                n_val=400,
                epochs=4,
            ),
            WorldSpec(
                "W36",
                "thin 2-px scanner frame along the top and left edges, colour per class, "
                "3 classes, ResNet-18",
                "calibration",
                (1, 4, 6),
                "frame_top_left",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                n_train=800,
                n_val=200,
                epochs=4,
            ),
        )
    }
)

# W37-W40: four held-out worlds built after 0.3.4's change was decided, one per family
# (background: uneven illumination, a smooth radial vignette per class over the whole background,
# no colour, no stripes, no flat exposure; border: a 3-px dashed frame on all four edges, small
# CNN; group: a barcode label at the bottom centre on two of five classes, ResNet-18; thin: a
# 1-px dashed line through the centre whose angle, not its colour, tells the class), each with a
# new artifact kind at a new position. Validated with ground truth only (one run each, all valid,
# the clean controls show no reliance; W38's clean control learns the digits with a thin margin:
# 0.68 against 0.67) before any monitor ran on them.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W37",
                "background vignette per class (light centre / light corners / lit from the top "
                "left, grey, smooth) over the whole background outside the digit, 3 classes, 60 px",
                "heldout",
                (3, 5, 8),
                "vignette",
                image_size=60,
                digit_size=30,
                n_train=1200,
                n_val=400,
                epochs=4,
            ),
            WorldSpec(
                "W38",
                "3-px dashed frame (coloured dashes on dark gaps) on all four edges, colour per "
                "class, 3 classes, 52 px",
                "heldout",
                (2, 8, 9),
                "frame_dashed",
                image_size=52,
                digit_size=26,
                n_train=1200,
                n_val=400,
                epochs=4,
            ),
            WorldSpec(
                "W39",
                "group shortcut: white barcode label (bottom centre) on 95% of classes 1, 4 of 5, "
                "5% of others, ResNet-18",
                "heldout",
                (0, 2, 3, 6, 8),
                "group_barcode",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                correlation=0.95,
                group=(1, 4),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            WorldSpec(
                "W40",
                "thin 1-px dashed line through the centre (broken by the digit), angle per class "
                "(20, 80, 140 degrees), one colour, 3 classes, 44 px",
                "heldout",
                (0, 6, 9),
                "angled_line",
                image_size=44,
                digit_size=22,
                n_train=1200,
                n_val=400,
                epochs=5,
            ),
        )
    }
)

# W41-W43: three calibration worlds built after 0.3.4, to reproduce for the next round the three
# kinds of failure its held-out split still showed, each a new instance of the held-out world's
# kind (other colours, position, digits, size): a coloured cast graded towards one side (W31,
# never flagged without masks), a thin corner bracket on two of five classes, ResNet-18 (W25,
# missed without masks) and a sticker tied to one of four findings, ResNet-18 (W16, flagged with
# masks at epochs 1-3, not at its final epoch).
# Validated with ground truth (one run each; DETECTION.md, 0.3.4): W41 and W42 valid as
# first built; W43's clean control first missed its tied finding (digit 8: 0.74 < 0.75), so W43
# was changed to findings 0/1/2/6 tied to finding 0 and re-validated (valid, no reliance).
# Then run with flags once (0.3.4 monitor, seed 0, threads 1): W42 reproduces W25's failure
# (without masks `background(1)` on diffuse maps at epochs 1-2, not at the final epoch; with
# masks `artifact(4)` from epoch 2); W41 (`background` final in both modes) and W43 (`artifact(0)`
# and `background(0)` at epochs 1-5 in both modes) are caught, so they do not reproduce W31's and
# W16's; no false alarm on the three clean controls.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W41",
                "background colour cast (magenta / teal / yellow per class, stronger towards the "
                "right) over the whole background outside the digit, 3 classes",
                "calibration",
                (1, 5, 8),
                "tint_right",
                n_train=1200,
                n_val=400,
                epochs=4,
            ),
            WorldSpec(
                "W42",
                "group shortcut: sky-blue corner bracket (top left) on 95% of classes 1, 4 of 5, "
                "5% of others, ResNet-18",
                "calibration",
                (0, 2, 4, 6, 8),
                "group_bracket_top_left",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                correlation=0.95,
                group=(1, 4),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            MultiLabelSpec(
                "W43",
                "multi-label, 4 findings; light-green upright sticker (top right) tied to finding "
                "0, ResNet-18",
                "calibration",
                (0, 1, 2, 6),
                "token",
                arch="resnet18",
                image_size=64,
                digit_size=18,
                token_class=0,
                prevalence=(0.5, 0.6, 0.35, 0.7),
                token="tall_sticker",
                corner="top_right",
                n_train=1000,
                n_val=240,
                epochs=6,
            ),
        )
    }
)

# W44-W46: three held-out worlds built for the seventh round, while the monitor's next change was
# being made, to judge it: two group worlds (a small dark round grommet near the bottom-left corner
# on two of five classes, ResNet-18; a light tape strip with a faint hatch on the right edge near
# the top on three of six classes, small CNN) and a plain per-class label artifact away from every
# edge (a small round colour stamp half-way between the centre and the top-right corner, small
# CNN). Validated with ground truth only (no Grad-CAM callback, no monitor, no flags looked at;
# one run each, seed 0, threads 1): all three valid as first built, no spec changed. Final
# accuracy present / removed / swapped: W44 0.95 / 0.78 / 0.53 (reliance from epoch 1), clean
# 0.95 / 0.95 / 0.95; W45 0.83 / 0.48 / 0.01 (from epoch 1), clean 0.79 / 0.79 / 0.79 (0.58
# needed); W46 0.93 / 0.96 / 0.45 (from epoch 1), clean 0.96 / 0.95 / 0.95. The clean controls
# show no reliance. Every older world's tensors are unchanged by the STAMP_STYLES / TAB_STYLES /
# TAG_STYLES generalisation (W1-W43, shortcut and clean, train and val, all three variants:
# identical hashes before and after).
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W44",
                "group shortcut: small dark round grommet (9x9, 2-px wall, bottom left, 3 px in) "
                "on 95% of classes 2, 4 of 5, 5% of others, ResNet-18",
                "heldout",
                (1, 2, 5, 7, 9),
                "group_grommet",
                arch="resnet18",
                image_size=64,
                digit_size=32,
                correlation=0.95,
                group=(2, 4),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            WorldSpec(
                "W45",
                "group shortcut: light tape strip (12x4, faint hatch, right edge near the top) on "
                "95% of classes 1, 3, 4 of 6, 5% of others, 56 px",
                "heldout",
                (0, 2, 3, 5, 7, 8),
                "group_tape",
                image_size=56,
                digit_size=28,
                correlation=0.95,
                group=(1, 3, 4),
                n_train=1500,
                n_val=400,
                epochs=6,
            ),
            WorldSpec(
                "W46",
                "round colour stamp (6x6) half-way between the centre and the top-right corner, "
                "colour per class, 3 classes, 90/10 correlation, 52 px",
                "heldout",
                (0, 4, 7),
                "inset_stamp",
                image_size=52,
                digit_size=26,
                correlation=0.9,
                n_train=1200,
                n_val=400,
                epochs=5,
            ),
        )
    }
)

# W47-W49: three held-out worlds built while the monitor's next change was being made, to judge
# it: two group worlds (a light rounded date stamp with a dark 1-px outline near the top-left
# corner on two of five classes, ResNet-18; a dark filled hole punch at the middle of the top edge
# on two of six classes, small CNN) and a plain per-class mark (a thin 1-px diagonal scratch near
# the bottom-right corner, colour per class, 90/10, small CNN). Validated with ground truth only
# (no Grad-CAM callback, no monitor, no flags looked at; one run each, seed 0, threads 1): all
# three valid as first built, no spec changed. Final accuracy present / removed / swapped: W47
# 0.94 / 0.71 / 0.55 (reliance from epoch 0), clean 0.97 / 0.97 / 0.96; W48 0.96 / 0.97 / 0.58
# (from epoch 1: the digit alone carries it once learnt, the swapped mark still misleads), clean
# 0.93 / 0.94 / 0.94; W49 0.76 / 0.64 / 0.36 (from epoch 4), clean 0.68 / 0.68 / 0.69. The clean
# controls show no reliance. The STAMP_STYLES (rectangle, fill) and TAG_STYLES (diagonal shape)
# generalisation leaves every older world's tensors unchanged (W1-W46, shortcut and clean, train
# and val, all three variants: identical hashes before and after).
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W47",
                "group shortcut: light rounded date stamp (10x6, dark 1-px outline, top left, "
                "3 px in) on 95% of classes 0, 3 of 5, 5% of others, ResNet-18",
                "heldout",
                (0, 3, 4, 6, 9),
                "group_date_stamp",
                arch="resnet18",
                image_size=72,
                digit_size=36,
                correlation=0.95,
                group=(0, 3),
                n_train=1000,
                n_val=200,
                epochs=5,
            ),
            WorldSpec(
                "W48",
                "thin 1-px diagonal scratch (8 px) near the bottom-right corner, colour per class, "
                "2 classes, 90/10 correlation, 48 px",
                "heldout",
                (2, 7),
                "scratch",
                image_size=48,
                digit_size=24,
                correlation=0.9,
                n_train=1200,
                n_val=400,
                epochs=4,
            ),
            WorldSpec(
                "W49",
                "group shortcut: dark hole punch (5x5 filled square, middle of the top edge, 2 px "
                "in) on 95% of classes 2, 5 of 6, 5% of others, 60 px",
                "heldout",
                (1, 2, 4, 5, 6, 9),
                "group_hole_punch",
                image_size=60,
                digit_size=30,
                correlation=0.95,
                group=(2, 5),
                n_train=1500,
                n_val=400,
                epochs=6,
            ),
        )
    }
)

# W50: a calibration world built to reproduce, on the calibration split, the clean-control false
# alarm of the held-out worlds W21 and W44 (ResNet-18, group shortcut): there one class's digits
# happened to sit in one region, its Grad-CAM maps piled on that off-centre spot (the digit
# itself), and the hot-spot rule read it as an artifact. Here every class's digit is drawn within
# +-6 px of its own off-centre point (``place_jitter``, ``place_angles``; :func:`class_place`), in
# the shortcut world and in the clean control; the artifact is a new group kind, a short light
# staple bar (8x2 px) near the top-right corner, away from every class's point. Each group class's
# point lies 16 degrees from a non-group class's (top: classes 0, 1; bottom right: 2, 3; left: 4
# alone), so the place tells the pair and only the digit or the staple tells the class inside it.
# Validated with ground truth only (no Grad-CAM callback; seed 0, threads 1), three tries: with
# five evenly spaced points (72 degrees apart) the place alone told the class (shortcut world
# 0.99 / 0.99 / 0.99 present / removed / swapped, no reliance, at digit contrast 1.0 and 0.4);
# with the paired points and digit contrast 0.4 valid: 0.96 / 0.75 / 0.52 (reliance from epoch
# 0), clean 1.00 / 1.00 / 1.00. Then run with flags once (seed 0, threads 1): the shortcut world
# is caught in both modes (`artifact(1)` from epoch 0); the clean control raises a false alarm
# without masks, but `background(1)` from the diffuse-attention rule (normalised entropy 0.89-0.98;
# erasing the hottest 10% takes none of the evidence), not the hot-spot one, at every epoch; none
# with masks. So W50 does not reproduce W21's and W44's hot-spot alarm. One variant (digit contrast
# 0.7, +-4 px) was tried with flags once: the shortcut world turned invalid (0.99 / 0.97 / 0.84,
# the staple dropped once the digits were read) and the clean control raised no flag; reverted.
WORLDS.update(
    {
        s.name: s
        for s in (
            WorldSpec(
                "W50",
                "group shortcut: short light staple bar (8x2, top right, 2 px in) on 95% of "
                "classes 1, 3 of 5, 5% of others; each class's digit near its own off-centre "
                "point (+-6 px; classes 0, 1 and 2, 3 at nearby points), ResNet-18",
                "calibration",
                (0, 3, 4, 6, 8),
                "group_staple",
                arch="resnet18",
                image_size=64,
                digit_size=28,
                correlation=0.95,
                group=(1, 3),
                n_train=1000,
                n_val=200,
                epochs=5,
                digit_contrast=0.4,
                place_jitter=6,
                place_angles=(-98.0, -82.0, 37.0, 53.0, 180.0),
            ),
        )
    }
)
