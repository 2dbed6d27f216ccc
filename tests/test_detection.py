"""The held-out shortcut-detection benchmark: its worlds (exact) and one tiny end-to-end case.

No assertion here is about whether the alarm fires (the monitor's rules are being rewritten):
only the worlds, their ground truth and the report's structure are checked.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("sklearn")

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


dw = _load("detection_worlds")
SMALL = {"n_train": 24, "n_val": 40}
SINGLE = [n for n, s in dw.WORLDS.items() if not isinstance(s, dw.MultiLabelSpec)]
MULTI = [n for n, s in dw.WORLDS.items() if isinstance(s, dw.MultiLabelSpec)]


def _world(name: str, shortcut: bool = True, seed: int = 0):
    return dw.DigitWorld(dw.WORLDS[name], shortcut=shortcut, seed=seed, **SMALL)


def _bbox(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """``(y0, x0, y1, x1)``: the inclusive bounding box of an ``[H, W]`` bool mask's pixels."""
    idx = torch.nonzero(mask)
    (y0, x0), (y1, x1) = idx.min(0).values.tolist(), idx.max(0).values.tolist()
    return y0, x0, y1, x1


def _bounding_crop(mask: torch.Tensor) -> torch.Tensor:
    """The ``[H, W]`` bool mask cropped to the bounding box of its True pixels."""
    y0, x0, y1, x1 = _bbox(mask)
    return mask[y0 : y1 + 1, x0 : x1 + 1]


def test_splits_cover_what_the_benchmark_promises() -> None:
    cal = dw.select_worlds(split="calibration")
    held = dw.select_worlds(split="heldout")
    assert {s.name for s in cal} | {s.name for s in held} == set(dw.WORLDS)
    assert not {s.name for s in cal} & {s.name for s in held}
    assert len(dw.WORLDS) >= 8
    for part in (cal, held):
        assert {s.arch for s in part} == {"cnn", "resnet18"}
    assert any(s.num_classes == 10 for s in held)
    assert {"token", "moving"} <= {s.artifact for s in held}
    assert [s.name for s in dw.select_worlds("w3,W1")] == ["W3", "W1"]
    with pytest.raises(ValueError, match="unknown world"):
        dw.select_worlds("W99")


@pytest.mark.parametrize("name", SINGLE)
def test_world_is_deterministic_and_well_formed(name: str) -> None:
    rng = torch.random.get_rng_state()
    a, b = _world(name), _world(name)
    spec = a.spec
    s = spec.image_size
    for mode in dw.MODES:
        for split, n in (("train", SMALL["n_train"]), ("val", SMALL["n_val"])):
            ta, tb = a.variant(mode, split).tensors, b.variant(mode, split).tensors
            for x, y in zip(ta, tb):
                assert torch.equal(x, y)
            image, label, obj, art = ta
            assert image.shape == (n, 3, s, s) and image.dtype == torch.float32
            assert label.shape == (n,) and label.dtype == torch.long
            assert int(label.min()) >= 0 and int(label.max()) < spec.num_classes
            assert obj.shape == art.shape == (n, s, s)
            assert obj.dtype == art.dtype == torch.bool
            assert not (obj & art).any(), "object and artifact masks overlap"
            assert obj.flatten(1).any(1).all(), "every image has a digit"
    assert torch.equal(torch.random.get_rng_state(), rng), "the global RNG was used"
    # Another seed: other images.
    assert not torch.equal(_world(name, seed=1).val.tensors[0], a.val.tensors[0])


@pytest.mark.parametrize("name", SINGLE)
def test_variants_differ_only_in_the_artifact(name: str) -> None:
    world = _world(name)
    present, removed, swapped = (world.variant(m).tensors for m in dw.MODES)
    for other in (removed, swapped):
        assert torch.equal(other[1], present[1]) and torch.equal(other[2], present[2])
    assert not removed[3].any(), "the removed variant still has artifact pixels"
    for i in range(len(present[1])):
        changed = (present[0][i] != removed[0][i]).any(0)
        assert not (changed & ~present[3][i]).any(), f"image {i}: changes outside the mask"
        changed = (swapped[0][i] != removed[0][i]).any(0)
        assert not (changed & ~swapped[3][i]).any()
    # Swapped: each image carries the artifact of a class whose design differs from its own.
    split = world._split("val")
    spec = world.spec
    for i, (y, c) in enumerate(zip(split.labels.tolist(), split.swapped.tolist())):
        assert dw.design_of(spec, c) != dw.design_of(spec, y)
        base = (removed[0][i] * torch.tensor(dw.STD).view(3, 1, 1)) + torch.tensor(dw.MEAN).view(
            3, 1, 1
        )
        drawn, mask = dw.apply_artifact(
            spec, base, dw.design_of(spec, c), split.boxes[i], split.marks[i]
        )
        assert torch.equal(mask, swapped[3][i])
        expected = (drawn - torch.tensor(dw.MEAN).view(3, 1, 1)) / torch.tensor(dw.STD).view(
            3, 1, 1
        )
        assert torch.allclose(expected, swapped[0][i], atol=1e-5)


def test_shortcut_world_and_clean_control() -> None:
    spec = dw.WORLDS["W1"]
    short = dw.DigitWorld(spec, shortcut=True, n_train=200, n_val=200)
    clean = dw.DigitWorld(spec, shortcut=False, n_train=200, n_val=200)
    assert short.correlation == 1.0 and clean.correlation is None
    # Same images, different artifact assignment.
    assert torch.equal(short.variant("removed").tensors[0], clean.variant("removed").tensors[0])
    s, c = short._split("val"), clean._split("val")
    assert torch.equal(s.assigned, s.labels)
    agree = (c.assigned == c.labels).float().mean().item()
    assert 0.3 < agree < 0.7, "the clean control's artifact should be independent of the label"
    # The glyph (the artifact mask) tells the class apart in the shortcut world only.
    for world, expect in ((short, True), (clean, False)):
        _, labels, _, art = world.val.tensors
        glyph0 = art[labels == 0][0]
        same = torch.tensor([torch.equal(m, glyph0) for m in art])
        assert bool((same == (labels == 0)).all()) is expect
    # Imperfect correlation (W5: 0.9).
    w5 = dw.DigitWorld(dw.WORLDS["W5"], n_train=10, n_val=400)._split("val")
    follow = (w5.assigned == w5.labels).float().mean().item()
    assert 0.82 < follow < 0.97


def test_class_places_put_each_class_near_its_own_point_in_both_worlds() -> None:
    """W50: every digit lies within ``place_jitter`` of its class's point (the ink inside the
    digit's box, clear of the artifact), the same images in the shortcut world and the clean
    control; worlds without ``place_jitter`` keep their uniform placement."""
    spec = dw.WORLDS["W50"]
    j, d = int(spec.place_jitter or 0), spec.digit_size
    images, arts = {}, {}
    for shortcut in (True, False):
        world = dw.DigitWorld(spec, shortcut=shortcut, n_train=10, n_val=200)
        x, labels, obj, art = world.val.tensors
        images[shortcut], arts[shortcut] = x, art
        assert not (obj & art).any()
        for c in range(spec.num_classes):
            cy, cx = dw.class_place(spec, c)
            for m in obj[labels == c]:
                y0, x0, y1, x1 = _bbox(m)
                assert cy - j <= y0 and y1 < cy + j + d, (c, y0, y1, cy)
                assert cx - j <= x0 and x1 < cx + j + d, (c, x0, x1, cx)
    # the artifact is the only difference between the two worlds' images
    differ = (images[True] != images[False]).any(1)
    assert differ.any() and not (differ & ~(arts[True] | arts[False])).any()
    points = {dw.class_place(spec, c) for c in range(spec.num_classes)}
    assert len(points) == spec.num_classes
    assert dw.WORLDS["W44"].place_jitter is None


def test_token_world_marks_one_class_only() -> None:
    world = _world("W2")
    _, labels, _, art = world.val.tensors
    has = art.flatten(1).any(1)
    assert torch.equal(has, labels == world.spec.token_class)
    _, labels, _, art = world.variant("swapped").tensors
    assert torch.equal(art.flatten(1).any(1), labels != world.spec.token_class)


@pytest.mark.parametrize(
    "name",
    [
        *("W13", "W14", "W19", "W21", "W23", "W25", "W28", "W33", "W39", "W42"),
        *("W44", "W45", "W47", "W49", "W50"),
    ],
)
def test_group_world_marks_the_group_and_swapped_moves_it(name: str) -> None:
    spec = dw.WORLDS[name]
    world = dw.DigitWorld(spec, n_train=10, n_val=400)
    _, labels, _, art = world.val.tensors
    has = art.flatten(1).any(1)
    in_group = torch.isin(labels, torch.tensor(spec.group))
    assert dw.shortcut_classes(spec) == spec.group
    assert 0.88 < has[in_group].float().mean().item() < 1.0  # ~95 %
    assert 0.0 < has[~in_group].float().mean().item() < 0.12  # ~5 %
    _, labels, _, art = world.variant("swapped").tensors
    assert torch.equal(art.flatten(1).any(1), ~in_group)  # the group loses it, the others get it
    # the clean control: on a share group / classes of the images (2/5, 3/6), whatever the label
    clean = dw.DigitWorld(spec, shortcut=False, n_train=10, n_val=400)
    _, labels, _, art = clean.val.tensors
    has = art.flatten(1).any(1)
    in_group = torch.isin(labels, torch.tensor(spec.group))
    share = len(spec.group) / spec.num_classes
    for part in (has[in_group], has[~in_group]):
        assert abs(part.float().mean().item() - share) < 0.15


@pytest.mark.parametrize("name", ["W11", "W12", "W26", "W29"])
def test_jittered_token_moves_by_at_most_the_jitter(name: str) -> None:
    spec = dw.WORLDS[name]
    _, labels, _, art = _world(name).val.tensors
    ys, xs = [], []
    for m in art:
        idx = torch.nonzero(m)
        ys.append(int(idx[:, 0].min()))
        xs.append(int(idx[:, 1].min()))
    ys_t, xs_t = torch.tensor(ys), torch.tensor(xs)
    assert int(ys_t.max() - ys_t.min()) <= 2 * spec.jitter
    assert int(xs_t.max() - xs_t.min()) <= 2 * spec.jitter
    assert len(set(zip(ys, xs))) > 5  # it does move
    # same class, same design: equal mask shapes up to the shift (the marks' bounding boxes)
    j = next(i for i in range(1, len(labels)) if labels[i] == labels[0])
    assert torch.equal(_bounding_crop(art[j]), _bounding_crop(art[0]))


def test_thin_worlds_draw_lines_thinner_than_a_map_cell() -> None:
    for name, stride in (("W9", 4), ("W10", 8), ("W24", 8)):
        spec = dw.WORLDS[name]
        _, _, _, art = _world(name).val.tensors
        m = art[0]
        thickness = min(int(m.any(1).sum()), int(m.any(0).sum()))
        assert 1 <= thickness < stride, name
        assert int(m.sum()) > 3 * spec.image_size // 4  # long: most of a side


def test_thin_diagonal_is_thinner_than_a_map_cell() -> None:
    spec = dw.WORLDS["W27"]
    _, _, _, art = _world("W27").val.tensors
    m = art[0]
    # no 3x3 block inside the mark: its stroke is at most 2 px (a map cell of the CNN is 4 px)
    blocks = torch.nn.functional.avg_pool2d(m[None, None].float(), 3, stride=1)
    assert float(blocks.max()) < 1.0
    idx = torch.nonzero(m)
    rows = idx[:, 0].unique()
    assert len(rows) == dw.DIAGONAL_LENGTH > spec.image_size // 4  # long: a quarter of a side
    firsts = torch.stack([idx[idx[:, 0] == r, 1].min() for r in rows])
    assert torch.equal(firsts.diff(), torch.ones(len(rows) - 1, dtype=torch.long))  # diagonal
    assert all(int((idx[:, 0] == r).sum()) == 2 for r in rows)
    assert all(torch.equal(a, m) for a in art if a.any())  # one position for every image


def test_side_marker_letters_differ_per_class_in_one_box() -> None:
    spec = dw.WORLDS["W30"]
    base = torch.zeros(3, spec.image_size, spec.image_size)
    drawn = [dw.apply_artifact(spec, base, c, (0, 0, 1, 1), (0, 0)) for c in range(4)]
    assert all(torch.equal(mask, drawn[0][1]) for _, mask in drawn)  # the same 9x7 box
    assert int(drawn[0][1].sum()) == 63
    for a in range(4):
        for b in range(a + 1, 4):
            assert not torch.equal(drawn[a][0], drawn[b][0])  # L, R, A, P
    split = dw.DigitWorld(spec, n_train=10, n_val=400)._split("val")
    assert 0.82 < (split.assigned == split.labels).float().mean().item() < 0.97  # 90/10


def _whole_background(name: str, n: int = 4) -> tuple[tuple, tuple, list[torch.Tensor]]:
    """The val tensors of world ``name`` as present and with the artifact removed, and the
    expected masks of its first ``n`` images: the whole canvas but the digit's box grown by
    1 px (as W3's texture), checked against the world's artifact masks, and most of the canvas
    (no compact mark)."""
    world = _world(name)
    present, removed = world.val.tensors, world.variant("removed").tensors
    split = world._split("val")
    s = dw.WORLDS[name].image_size
    masks = []
    for i in range(n):
        y0, x0, y1, x1 = split.boxes[i]
        expected = torch.ones(s, s, dtype=torch.bool)
        expected[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
        assert torch.equal(present[3][i], expected)
        assert int(expected.sum()) > s * s // 2
        masks.append(expected)
    return present, removed, masks


def test_background_tint_covers_the_background_and_changes_colour_per_class() -> None:
    spec = dw.WORLDS["W31"]
    s = spec.image_size
    present, removed, masks = _whole_background("W31")
    for i, expected in enumerate(masks):
        # every background pixel changes, more towards the bottom (the cast's gradient)
        delta = (present[0][i] - removed[0][i]).abs().sum(0)
        assert bool((delta[expected] > 0).all())
        rows = delta.sum(1) / expected.sum(1).clamp_min(1)
        assert float(rows[-3:].mean()) > 2 * float(rows[:3].mean())
    # one cast colour per class: on a flat grey canvas the casts differ, and equal the colours
    base = torch.full((3, s, s), 0.3)
    drawn = [dw.apply_artifact(spec, base, c, (0, 0, 1, 1), (0, 0))[0] for c in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not torch.allclose(drawn[a], drawn[b], atol=0.02)
        hue = drawn[a][:, -1, -1] - base[:, -1, -1]  # the bottom row: the strongest cast
        expected_hue = dw.TINT_STRENGTH[1] * (torch.tensor(dw.TINT_COLOURS[a]) - 0.3)
        assert torch.allclose(hue, expected_hue, atol=1e-5)


def test_side_graded_tint_covers_the_background_and_grows_towards_the_right() -> None:
    spec = dw.WORLDS["W41"]
    s = spec.image_size
    colours, (weak, strong), edge = dw.TINT_STYLES[spec.artifact]
    assert edge == "right" and dw.TINT_STYLES["tint"][2] == "bottom"
    present, removed, masks = _whole_background("W41")
    for i, expected in enumerate(masks):
        assert torch.equal(present[0][i][:, ~expected], removed[0][i][:, ~expected])
        delta = (present[0][i] - removed[0][i]).abs().sum(0)
        assert bool((delta[expected] > 0).all())  # every background pixel changes
        cols = delta.sum(0) / expected.sum(0).clamp_min(1)
        assert float(cols[-3:].mean()) > 2 * float(cols[:3].mean())  # more towards the right
    # on a flat grey canvas: one colour per class (not W31's), constant down each column,
    # growing linearly from the left edge to the right edge
    base = torch.full((3, s, s), 0.3)
    drawn = [dw.apply_artifact(spec, base, c, (0, 0, 1, 1), (0, 0))[0] for c in range(3)]
    for a in range(3):
        assert torch.allclose(drawn[a][:, 2:], drawn[a][:, 2:3].expand(3, s - 2, s))
        for side, opacity in ((0, weak), (-1, strong)):
            hue = drawn[a][:, -1, side] - base[:, -1, side]
            assert torch.allclose(hue, opacity * (torch.tensor(colours[a]) - 0.3), atol=1e-5)
        assert colours[a] not in dw.TINT_COLOURS
        for b in range(a + 1, 3):
            assert not torch.allclose(drawn[a], drawn[b], atol=0.02)


Drawn = tuple[torch.Tensor, torch.Tensor]


def _drawn_pair(first: str, second: str) -> tuple[Drawn, Drawn, int]:
    """Class 0's ``(image, mask)`` of two worlds of one image size on a black canvas, and the
    size."""
    a, b = dw.WORLDS[first], dw.WORLDS[second]
    assert a.image_size == b.image_size
    s = a.image_size
    draw = [dw.apply_artifact(w, torch.zeros(3, s, s), 0, (0, 0, 1, 1), (0, 0)) for w in (a, b)]
    return draw[0], draw[1], s


def test_top_left_bracket_is_the_mirror_of_the_bottom_right_bracket() -> None:
    (img_a, ma), (img_b, mb), s = _drawn_pair("W25", "W42")
    a, b = dw.WORLDS["W25"], dw.WORLDS["W42"]
    assert torch.equal(mb, ma.flip(0, 1))
    assert int(mb.sum()) == 2 * 2 * 10 - 4  # two 2x10 arms sharing a 2x2 corner
    assert bool(mb[2:4, 2:12].all()) and bool(mb[2:12, 2:4].all())  # 2 px off the edges
    blocks = torch.nn.functional.avg_pool2d(mb[None, None].float(), 3, stride=1)
    assert float(blocks.max()) < 1.0  # 2-px arms: no 3x3 block
    assert not torch.equal(img_a[:, ma][:, 0], img_b[:, mb][:, 0])  # another colour
    assert dw.reserved_box(b) == (0, 0, 14, 14) and dw.reserved_box(a) == (s - 14, s - 14, s, s)
    _, _, obj, art = dw.DigitWorld(b, n_train=10, n_val=60).val.tensors
    assert not obj[:, :14, :14].any()  # the digit keeps out of the bracket's corner
    assert all(torch.equal(m, mb) for m in art if m.any())  # one position for every image


def test_punched_holes_are_two_round_discs_at_the_left_edge() -> None:
    spec = dw.WORLDS["W33"]
    s = spec.image_size
    _, m = dw.apply_artifact(spec, torch.zeros(3, s, s), 0, (0, 0, 1, 1), (0, 0))
    assert int(m.sum()) == 2 * 21  # two 5x5 discs with their corners cut
    idx = torch.nonzero(m)
    assert int(idx[:, 1].min()) == 2 and int(idx[:, 1].max()) == 6  # at the left edge
    assert int(idx[:, 0].min()) > s // 2  # in the lower half
    rows = m.any(1).nonzero().flatten()
    assert len(rows) == 10 and int(rows.diff().max()) == 3  # two holes, two rows apart
    assert not m[rows[0], 2] and not m[rows[0], 6]  # round: no corner pixel
    ry0, _, ry1, rx1 = dw.reserved_box(spec)  # the digit keeps out of the zone
    assert not m[:ry0].any() and not m[ry1:].any() and not m[:, rx1:].any()


@pytest.mark.parametrize("name", ["W34", "W36"])
def test_scanner_frame_is_thin_along_two_edges_and_the_digit_keeps_off(name: str) -> None:
    spec = dw.WORLDS[name]
    s = spec.image_size
    edges = dw.FRAME_EDGES[spec.artifact]
    _, _, obj, art = _world(name).val.tensors
    expected = torch.zeros(s, s, dtype=torch.bool)
    keep_off = {  # the 4-px strip along each edge of the frame: 2 px of frame, 2 px to spare
        "bottom": (expected[s - 2 :, :], obj[:, s - 4 :, :]),
        "right": (expected[:, s - 2 :], obj[:, :, s - 4 :]),
        "top": (expected[:2, :], obj[:, :4, :]),
        "left": (expected[:, :2], obj[:, :, :4]),
    }
    for edge in edges:
        keep_off[edge][0][:] = True
        assert not keep_off[edge][1].any()  # the digit keeps off the frame, 2 px to spare
    assert len(edges) == 2 and int(expected.sum()) == 2 * 2 * s - 4  # two edges, 2 px wide
    assert all(torch.equal(a, expected) for a in art)  # every image, one frame
    assert len(dw.reserved_boxes(spec)) == 2 and dw.reserved_box(spec) is None
    base = torch.zeros(3, s, s)
    corner = (s - 1, 0) if "bottom" in edges else (0, s - 1)  # a pixel on one edge only
    colours = [
        dw.apply_artifact(spec, base, c, (0, 0, 1, 1), (0, 0))[0][:, corner[0], corner[1]]
        for c in range(3)
    ]
    assert len({tuple(c.tolist()) for c in colours}) == 3  # one colour per class
    # the frame is thinner than a map cell of ResNet-18's first stage (4 px at stride 4)
    assert int(expected[:, s // 2].sum()) == 2 and int(expected[s // 2].sum()) == 2


def test_top_left_frame_is_the_mirror_of_the_bottom_right_frame() -> None:
    (_, ma), (_, mb), _ = _drawn_pair("W34", "W36")
    assert torch.equal(mb, ma.flip(0, 1))
    assert int((ma & mb).sum()) == 2 * 4  # they share only the two 2x2 corners they cross


def test_background_exposure_covers_the_background_and_is_grey_per_class() -> None:
    spec = dw.WORLDS["W35"]
    s = spec.image_size
    present, removed, masks = _whole_background("W35")
    for i, expected in enumerate(masks):  # the digit's box is untouched
        assert torch.equal(present[0][i][:, ~expected], removed[0][i][:, ~expected])
    # on a grey ramp each class maps a grey level to a grey level (no colour), all differently
    ramp = torch.linspace(0.2, 0.4, s).view(1, 1, s).expand(3, s, s).contiguous()
    drawn = [dw.apply_artifact(spec, ramp, c, (0, 0, 1, 1), (0, 0))[0] for c in range(3)]
    for a in range(3):
        assert torch.equal(drawn[a][0], drawn[a][1]) and torch.equal(drawn[a][1], drawn[a][2])
        contrast, brightness = dw.EXPOSURE_LEVELS[a]
        row = drawn[a][0, -1]  # the bottom row, away from the digit box
        slope = (row[-1] - row[1]) / (ramp[0, -1, -1] - ramp[0, -1, 1])
        assert abs(float(slope) - contrast) < 1e-4  # the contrast: the slope of the mapping
        level = row[1:].mean() - ramp[0, -1, 1:].mean()
        pivot = dw.EXPOSURE_PIVOT
        expected_level = (contrast - 1) * (ramp[0, -1, 1:].mean() - pivot) + brightness
        assert abs(float(level - expected_level)) < 1e-4
        for b in range(a + 1, 3):
            assert (drawn[a] - drawn[b]).abs().mean() > 0.05


@pytest.mark.parametrize("name", ["W37", "W38", "W40", "W41"])
def test_new_worlds_follow_the_label_and_the_clean_control_draws_it_independently(
    name: str,
) -> None:
    spec = dw.WORLDS[name]
    short = dw.DigitWorld(spec, n_train=10, n_val=300)._split("val")
    clean = dw.DigitWorld(spec, shortcut=False, n_train=10, n_val=300)._split("val")
    assert torch.equal(short.assigned, short.labels)  # correlation 1: every image its own class
    assert torch.equal(short.base, clean.base)  # the same images, only the artifact differs
    agree = (clean.assigned == clean.labels).float().mean().item()
    assert abs(agree - 1 / spec.num_classes) < 0.1  # independent of the label
    for c in range(spec.num_classes):  # every artifact design on every class
        assert len(clean.assigned[clean.labels == c].unique()) == spec.num_classes


def test_background_vignette_covers_the_background_and_is_smooth_grey_per_class() -> None:
    spec = dw.WORLDS["W37"]
    s = spec.image_size
    present, removed, masks = _whole_background("W37")
    for i, expected in enumerate(masks):
        assert torch.equal(present[0][i][:, ~expected], removed[0][i][:, ~expected])
        changed = (present[0][i] != removed[0][i]).any(0)
        assert float(changed[expected].float().mean()) > 0.9  # nearly all of the background
    # on a flat grey canvas: grey, smooth (no stripes, no edges), radial, different per class;
    # the digit box (0, 0, 1, 1) keeps the 2x2 top-left corner as it is
    base = torch.full((3, s, s), 0.4)
    drawn = [dw.apply_artifact(spec, base, c, (0, 0, 1, 1), (0, 0))[0] for c in range(3)]
    for a, img in enumerate(drawn):
        assert torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])  # no colour
        g = img[0]
        assert float(g[:, 2:].diff(dim=0).abs().max()) < 0.03  # smooth down the columns
        assert float(g[2:, :].diff(dim=1).abs().max()) < 0.03  # and along the rows
        cy, cx, centre, corner = dw.VIGNETTE_PROFILES[a]
        y, x = max(round(cy * (s - 1)), 2), max(round(cx * (s - 1)), 2)
        assert abs(float(g[y, x]) - (0.4 + centre)) < 0.01  # the profile's centre
        assert abs(float(g[-1, -1]) - (0.4 + corner)) < 1e-5  # the farthest corner
        assert torch.allclose(g, g.T, atol=1e-6)  # radial around a point on the diagonal
        for b in range(a + 1, 3):
            assert (drawn[a] - drawn[b]).abs().mean() > 0.05
    # not an exposure: the same class darkens some background pixels and lightens others
    delta = drawn[0][0] - base[0]
    assert float(delta.min()) < -0.1 and float(delta.max()) > 0.1


def test_dashed_frame_runs_along_all_four_edges_and_the_digit_keeps_off() -> None:
    spec = dw.WORLDS["W38"]
    s = spec.image_size
    width, dash, colours = dw.frame_style(spec.artifact)
    assert (width, dash) == (3, 4) and dw.FRAME_EDGES[spec.artifact] == (
        "top",
        "bottom",
        "left",
        "right",
    )
    _, _, obj, art = _world("W38").val.tensors
    expected = torch.ones(s, s, dtype=torch.bool)
    expected[width : s - width, width : s - width] = False
    assert all(torch.equal(a, expected) for a in art)  # every image, one 3-px frame
    inner = torch.ones(s, s, dtype=torch.bool)
    inner[width + 2 : s - width - 2, width + 2 : s - width - 2] = False
    assert not (obj & inner).any()  # the digit keeps 2 px off the frame
    assert len(dw.reserved_boxes(spec)) == 4 and dw.reserved_box(spec) is None
    base = torch.zeros(3, s, s)
    drawn = [dw.apply_artifact(spec, base, c, (0, 0, 1, 1), (0, 0))[0] for c in range(3)]
    for c, img in enumerate(drawn):
        top, left = img[:, 1, :], img[:, :, 1]  # a row of the top strip, a column of the left
        for line in (top, left):
            coloured = (line == torch.tensor(colours[c]).view(3, 1)).all(0)
            dark = (line == dw.DASH_DARK).all(0)
            assert torch.equal(coloured | dark, torch.ones(s, dtype=torch.bool))
            assert torch.equal(coloured, (torch.arange(s) // dash) % 2 == 0)  # 4 on, 4 off
    assert len({tuple(img[:, 1, 0].tolist()) for img in drawn}) == 3  # one colour per class
    # thinner than a map cell of the small CNN (4 px at stride 4), on every edge
    assert int(expected[:, s // 2].sum()) == 2 * width and int(expected[s // 2].sum()) == 2 * width


def test_barcode_label_sits_at_the_bottom_centre_inside_its_zone() -> None:
    spec = dw.WORLDS["W39"]
    s = spec.image_size
    img, m = dw.apply_artifact(spec, torch.zeros(3, s, s), 0, (0, 0, 1, 1), (0, 0))
    crop = _bounding_crop(m)
    n = len(dw.BARCODE)
    assert crop.shape == (7, n + 2) and bool(crop.all())  # one solid label, a 1-px quiet zone
    idx = torch.nonzero(m)
    x0, x1 = int(idx[:, 1].min()), int(idx[:, 1].max())
    assert abs((x0 + x1) / 2 - (s - 1) / 2) <= 1  # centred
    assert int(idx[:, 0].max()) == s - 3  # at the bottom, 2 px above the edge
    ry0, rx0, ry1, rx1 = dw.reserved_box(spec)
    assert int(idx[:, 0].min()) >= ry0 + 2 and x0 >= rx0 + 1 and x1 < rx1 - 1  # inside the zone
    row = img[0, int(idx[:, 0].min()) + 3, x0 + 1 : x1]  # a row through the bars
    assert torch.equal(row < 0.5, torch.tensor([c == "1" for c in dw.BARCODE]))
    _, _, obj, _ = _world("W39").val.tensors
    assert not obj[:, ry0:ry1, rx0:rx1].any()  # the digit keeps out of the zone


def test_angled_line_is_one_pixel_dashed_and_its_angle_tells_the_class() -> None:
    spec = dw.WORLDS["W40"]
    s = spec.image_size
    masks = [
        dw.apply_artifact(spec, torch.zeros(3, s, s), c, (0, 0, 1, 1), (0, 0))[1] for c in range(3)
    ]
    on, off = dw.ANGLED_LINE_DASH
    for c, m in enumerate(masks):
        blocks = torch.nn.functional.avg_pool2d(m[None, None].float(), 2, stride=1)
        assert float(blocks.max()) < 1.0  # no 2x2 block: 1 px, thinner than a map cell (4 px)
        idx = torch.nonzero(m).float()
        assert len(idx) > s // 2  # long: the dashes cover most of a side
        centred = idx - idx.mean(0)
        vy, vx = torch.linalg.eigh(centred.T @ centred).eigenvectors[:, -1].tolist()
        angle = float(torch.atan2(torch.tensor(vy), torch.tensor(vx)).rad2deg()) % 180
        assert abs(angle - dw.ANGLED_LINE_DEGREES[c]) < 3  # the principal axis: the class angle
        along = idx[:, 1] if abs(vx) >= abs(vy) else idx[:, 0]
        assert torch.equal(along.long() % (on + off) < on, torch.ones(len(idx), dtype=torch.bool))
        assert len(along.unique()) == len(along)  # one pixel per step along the major axis
    colours = set()
    for c in range(3):
        img, _ = dw.apply_artifact(spec, torch.zeros(3, s, s), c, (0, 0, 1, 1), (0, 0))
        colours |= {tuple(img[:, masks[c]].T[k].tolist()) for k in range(int(masks[c].sum()))}
    assert colours == {tuple(torch.tensor(dw.ANGLED_LINE_COLOUR).tolist())}  # only the angle
    # in the world: the line stops at the digit's box grown by 1 px (drawn behind it)
    world = _world("W40")
    split = world._split("val")
    _, _, _, art = world.val.tensors
    for i in range(8):
        y0, x0, y1, x1 = split.boxes[i]
        assert not art[i, max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1].any()
        assert art[i].any()


def _drawn(name: str, design: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """World ``name``'s artifact design drawn on a black canvas: ``(image [3, S, S], mask)``."""
    s = dw.WORLDS[name].image_size
    return dw.apply_artifact(dw.WORLDS[name], torch.zeros(3, s, s), design, (0, 0, 1, 1), (0, 0))


def test_styled_stamp_tab_and_tag_kinds_keep_the_old_worlds_geometry() -> None:
    # the ring stamp, the two notched tabs and the corner tag, as they were drawn before their
    # kinds became rows of STAMP_STYLES / TAB_STYLES / TAG_STYLES
    for name in ("W19", "W21", "W23", "W5"):
        spec = dw.WORLDS[name]
        s = spec.image_size
        img, mask = _drawn(name)
        expected = torch.zeros(s, s, dtype=torch.bool)
        if name == "W19":
            expected[2:12, s - 12 : s - 2] = True
            expected[5:9, s - 9 : s - 5] = False
            box = (0, s - 14, 14, s)
        elif name == "W21":
            y = s // 2 - 8
            expected[y : y + 16, 1:5] = True
            assert bool((img[:, y + 3 : y + 16 : 4, 1:4] == 0.05).all())
            box = (s // 2 - 10, 0, s // 2 + 10, 7)
        elif name == "W23":
            y = s // 2 - 7
            expected[y : y + 14, s - 5 : s - 1] = True
            assert bool((img[:, y + 2 : y + 14 : 3, s - 4 : s - 1] == 0.98).all())
            box = (s // 2 - 9, s - 7, s // 2 + 9, s)
        else:
            expected[s - 7 : s - 1, s - 9 : s - 1] = True
            box = (s - 8, s - 10, s, s)
        assert torch.equal(mask, expected), name
        assert dw.reserved_box(spec) == box, name


def test_dark_grommet_is_a_round_hollow_ring_near_the_bottom_left_corner() -> None:
    spec = dw.WORLDS["W44"]
    s = spec.image_size
    img, mask = _drawn("W44")
    y0, x0, y1, x1 = _bbox(mask)
    assert (y0, x0, y1, x1) == (s - 12, 3, s - 4, 11)  # 9x9, 3 px in from the left and bottom
    crop = mask[y0 : y1 + 1, x0 : x1 + 1]
    assert not crop[2:7, 2:7].any()  # a 5x5 hole: the background shows through
    ring = torch.ones(9, 9, dtype=torch.bool)
    ring[2:7, 2:7] = False
    corners = [(0, 0), (0, 1), (1, 0)]
    for dy, dx in corners + [(8 - a, b) for a, b in corners]:
        for y, x in ((dy, dx), (dy, 8 - dx)):
            ring[y, x] = False  # round: 3 px cut at each outer corner
    assert torch.equal(crop, ring)
    assert bool(crop[4, :2].all()) and bool(crop[:2, 4].all())  # a 2-px wall
    assert float(img[:, mask].max()) < 0.1  # dark
    assert dw.reserved_box(spec) == (s - 14, 0, s, 14)
    world = dw.DigitWorld(spec, n_train=10, n_val=60)
    _, _, obj, art = world.val.tensors
    assert not obj[:, s - 14 :, :14].any()  # the digit keeps out of the grommet's corner
    assert all(torch.equal(m, mask) for m in art if m.any())  # one position for every image
    w19 = dw._cut_corners(10, 10, 0)  # W19's square stamp: no cut
    assert bool(w19.all()) and int(dw._cut_corners(9, 9, 2).sum()) == 81 - 12


def test_light_tape_runs_down_the_right_edge_near_the_top_with_a_faint_hatch() -> None:
    spec = dw.WORLDS["W45"]
    s = spec.image_size
    img, mask = _drawn("W45")
    y0, x0, y1, x1 = _bbox(mask)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (12, 4) and bool(mask[y0 : y1 + 1, x0 : x1 + 1].all())
    assert x1 == s - 2 and y0 < s // 4  # 1 px off the right edge, near the top
    tape = img[:, y0 : y1 + 1, x0 : x1 + 1]
    grey = tape.mean(0)
    assert float(grey.min()) > 0.7  # light everywhere, the hatch too
    hatch = (tape != torch.tensor(dw.TAB_STYLES["group_tape"][3]).view(3, 1, 1)).any(0)
    assert torch.equal(hatch.any(1), torch.arange(12) % 2 == 1)  # every other row
    assert not hatch[:, 0].any() and bool(hatch[1::2, 1:].all())  # across the outer 3 px
    assert 0.05 < float((grey[0] - grey[1]).abs().max()) < 0.2  # faint
    ry0, rx0, ry1, rx1 = dw.reserved_box(spec)
    assert (ry0, rx0, ry1, rx1) == (y0 - 2, s - 7, y1 + 3, s)
    _, _, obj, _ = dw.DigitWorld(spec, n_train=10, n_val=60).val.tensors
    assert not obj[:, ry0:ry1, rx0:rx1].any()  # the digit keeps out of the tape's zone


def test_inset_stamp_sits_half_way_to_the_top_right_corner_one_colour_per_class() -> None:
    spec = dw.WORLDS["W46"]
    s = spec.image_size
    drawn = [_drawn("W46", c) for c in range(3)]
    masks = [m for _, m in drawn]
    assert all(torch.equal(m, masks[0]) for m in masks)  # one place and shape for all classes
    idx = torch.nonzero(masks[0]).float()
    cy, cx = ((idx.min(0).values + idx.max(0).values) / 2).tolist()
    assert abs(cy - 0.27 * s) <= 1 and abs(cx - 0.73 * s) <= 1  # centred half-way to the corner
    crop = _bounding_crop(masks[0])
    assert crop.shape == (6, 6) and torch.equal(crop, dw._cut_corners(6, 6, 2))  # round, filled
    assert int(idx.min()) > s // 5 - 1 and int(idx.max()) < s - s // 5  # off every edge
    colours = {tuple(img[:, masks[0]][:, 0].tolist()) for img, _ in drawn}
    assert len(colours) == 3
    ry0, rx0, ry1, rx1 = dw.reserved_box(spec)
    short = dw.DigitWorld(spec, n_train=10, n_val=400)
    _, _, obj, art = short.val.tensors
    assert not obj[:, ry0:ry1, rx0:rx1].any()  # the digit is never pasted over the stamp
    assert all(torch.equal(m, masks[0]) for m in art)
    sp = short._split("val")
    follow = (sp.assigned == sp.labels).float().mean().item()
    assert 0.85 < follow < 0.95  # 90/10
    clean = dw.DigitWorld(spec, shortcut=False, n_train=10, n_val=400)._split("val")
    assert torch.equal(sp.base, clean.base)
    agree = (clean.assigned == clean.labels).float().mean().item()
    assert abs(agree - 1 / 3) < 0.1  # the clean control: independent of the label


def test_date_stamp_is_a_light_rounded_label_with_a_dark_outline_near_the_top_left() -> None:
    spec = dw.WORLDS["W47"]
    img, mask = _drawn("W47")
    expected = torch.zeros_like(mask)
    expected[3:9, 3:13] = dw._cut_corners(6, 10, 1)  # 10 wide, 6 high, 3 px in, corners cut
    assert torch.equal(mask, expected)
    inside = torch.zeros_like(mask)
    inside[4:8, 4:12] = True
    outline = mask & ~inside
    assert int(outline.sum()) == 2 * 8 + 2 * 4  # a 1-px outline, round corners
    assert float(img[:, outline].max()) < 0.15 and float(img[:, inside].min()) > 0.8
    assert dw.reserved_box(spec) == (0, 0, 11, 15)
    _, _, obj, art = dw.DigitWorld(spec, n_train=10, n_val=60).val.tensors
    assert not obj[:, :11, :15].any()  # the digit keeps out of the stamp's corner
    assert all(torch.equal(m, mask) for m in art if m.any())
    hollow = dw.WORLDS["W19"]  # the older ring stamps stay hollow: fill None
    assert dw.STAMP_STYLES[hollow.artifact][6] is None


def test_scratch_is_a_one_pixel_diagonal_near_the_bottom_right_one_colour_per_class() -> None:
    spec = dw.WORLDS["W48"]
    s = spec.image_size
    drawn = [_drawn("W48", c) for c in range(2)]
    mask = drawn[0][1]
    assert torch.equal(drawn[1][1], mask)  # one place and shape for both classes
    expected = torch.zeros_like(mask)
    for i in range(8):  # from the bottom-left to the top-right of an 8x8 box, 4 px in
        expected[s - 5 - i, s - 12 + i] = True
    assert torch.equal(mask, expected)
    colours = [tuple(img[:, mask][:, 0].tolist()) for img, _ in drawn]
    assert colours[0] != colours[1]
    assert dw.reserved_box(spec) == (s - 13, s - 13, s - 3, s - 3)
    short = dw.DigitWorld(spec, n_train=10, n_val=400)
    _, _, obj, art = short.val.tensors
    assert not obj[:, s - 13 : s - 3, s - 13 : s - 3].any()
    assert all(torch.equal(m, mask) for m in art)
    sp = short._split("val")
    follow = (sp.assigned == sp.labels).float().mean().item()
    assert 0.85 < follow < 0.95  # 90/10


def test_hole_punch_is_a_dark_filled_square_at_the_middle_of_the_top_edge() -> None:
    spec = dw.WORLDS["W49"]
    s = spec.image_size
    img, mask = _drawn("W49")
    expected = torch.zeros_like(mask)
    expected[2:7, s // 2 - 2 : s // 2 + 3] = True  # 5x5, 2 px in, centred on the top edge
    assert torch.equal(mask, expected)
    assert float(img[:, mask].max()) < 0.1  # dark
    assert dw.reserved_box(spec) == (0, s // 2 - 4, 9, s // 2 + 5)
    _, _, obj, art = dw.DigitWorld(spec, n_train=10, n_val=60).val.tensors
    assert not obj[:, :9, s // 2 - 4 : s // 2 + 5].any()
    assert all(torch.equal(m, mask) for m in art if m.any())


def test_checker_token_sits_in_the_bottom_centre_cell() -> None:
    spec = dw.WORLDS["W32"]
    s, cell = spec.image_size, spec.image_size // spec.cells
    colour, mask = dw._token_patch(spec, s)
    y0, x0, y1, x1 = _bbox(mask)
    assert (y1 - y0 + 1, x1 - x0 + 1) == (8, 8) and int(mask.sum()) == 64  # a full 8x8 patch
    assert y0 >= s - cell and cell <= x0 and x1 < 2 * cell  # the middle cell of the bottom row
    patch = colour[0, y0 : y1 + 1, x0 : x1 + 1]
    light = patch > 0.5
    assert int(light.sum()) == 32  # half light, half dark
    squares = light[::2, ::2]  # one pixel per 2x2 square: a 4x4 checkerboard
    assert torch.equal(squares, (torch.arange(4).view(4, 1) + torch.arange(4)) % 2 == 0)
    assert torch.equal(light, squares.repeat_interleave(2, 0).repeat_interleave(2, 1))


def test_tall_sticker_token_sits_in_the_top_right_cell() -> None:
    spec = dw.WORLDS["W43"]
    s, cell = spec.image_size, spec.image_size // spec.cells
    colour, mask = dw._token_patch(spec, s)
    crop = _bounding_crop(mask)
    assert crop.shape == (10, 6) and bool(crop.all())  # an upright 10x6 label
    y0, x0, y1, x1 = _bbox(mask)
    assert y1 < cell and x0 >= s - cell  # inside the top-right cell
    patch = colour[:, y0 : y1 + 1, x0 : x1 + 1]
    dark = (patch < 0.1).all(0)
    assert int(dark.sum()) == 2 * 4 and dark.any(1).sum() == 2  # two 4-px dark text lines
    assert torch.equal(patch[:, ~dark][:, 0], torch.tensor([0.6, 1.0, 0.55]))  # light green
    assert not (patch[:, ~dark] != patch[:, ~dark][:, :1]).any()
    w16 = dw._token_patch(dw.WORLDS["W16"], s)[1]
    assert not (mask & w16).any()  # not W16's sticker: another place, another shape


@pytest.mark.parametrize("name", ["W1", "W6"])
def test_models_are_deterministic_without_the_global_rng(name: str) -> None:
    spec = dw.WORLDS[name]
    rng = torch.random.get_rng_state()
    a, b = dw.build_model(spec, seed=3), dw.build_model(spec, seed=3)
    assert torch.equal(torch.random.get_rng_state(), rng)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)
    c = dw.build_model(spec, seed=4)
    assert not torch.equal(next(iter(a.parameters())), next(iter(c.parameters())))
    x = torch.zeros(2, 3, spec.image_size, spec.image_size)
    assert a.eval()(x).shape == (2, spec.num_classes)


@pytest.mark.parametrize("name", MULTI)
def test_multilabel_world_token_follows_its_finding_only_in_the_shortcut_world(name: str) -> None:
    rng = torch.random.get_rng_state()
    spec = dw.WORLDS[name]
    short = dw.make_world(spec, shortcut=True, n_train=16, n_val=300)
    clean = dw.make_world(spec, shortcut=False, n_train=16, n_val=300)
    again = dw.make_world(spec, shortcut=True, n_train=16, n_val=300)
    assert isinstance(short, dw.MultiLabelWorld)
    for a, b in zip(short.val.tensors, again.val.tensors):
        assert torch.equal(a, b)
    s, k = spec.image_size, spec.num_classes
    for world, follows in ((short, True), (clean, False)):
        present, removed, swapped = (world.variant(m).tensors for m in dw.MODES)
        image, labels, obj, art = present
        assert image.shape == (300, 3, s, s) and labels.shape == (300, k)
        assert labels.dtype == torch.float32 and set(labels.unique().tolist()) == {0.0, 1.0}
        assert 0.35 < float(labels.mean()) < 0.65 and not (obj & art).any()
        has, tied = art.flatten(1).any(1), labels[:, spec.token_class] > 0
        assert bool((has == tied).all()) is (follows and spec.correlation == 1.0)
        if follows:  # the token follows its finding on a share ``correlation`` of the images
            assert abs(float((has == tied).float().mean()) - spec.correlation) < 0.05
        if not follows:  # independent of every finding
            for c in range(k):
                agree = float((has == (labels[:, c] > 0)).float().mean())
                assert 0.35 < agree < 0.65
        assert not removed[3].any()
        assert torch.equal(swapped[3].flatten(1).any(1), ~has)
        for other in (removed, swapped):  # same findings, same pixels outside the token
            assert torch.equal(other[1], labels) and torch.equal(other[2], obj)
            outside = ~(art | other[3])[:, None].expand_as(image)
            assert torch.equal(other[0][outside], image[outside])
    # the same images in the shortcut world and its clean control
    assert torch.equal(short.variant("removed").tensors[0], clean.variant("removed").tensors[0])
    assert torch.equal(torch.random.get_rng_state(), rng), "the global RNG was used"


def test_few_probe_worlds_annotate_few_probes_of_one_class() -> None:
    for name, spec in dw.WORLDS.items():
        if not isinstance(spec, dw.FewProbeSpec):
            continue
        world = dw.make_world(spec, n_train=16, n_val=400)
        idx = dw.annotated_probe_index(world)
        assert torch.equal(
            idx, dw.annotated_probe_index(dw.make_world(spec, n_train=16, n_val=400))
        )
        counts = torch.bincount(world.val.tensors[1][idx], minlength=spec.num_classes)
        assert len(idx) == spec.num_probes and len(set(idx.tolist())) == spec.num_probes
        assert int(counts[spec.few_class]) == spec.few_probes, name
        others = counts[torch.arange(spec.num_classes) != spec.few_class]
        assert int(others.max()) - int(others.min()) <= 1  # round-robin over the other classes
    with pytest.raises(TypeError):
        dw.annotated_probe_index(_world("W1"))


def test_multilabel_validity_and_the_right_label() -> None:
    bench = _load("bench_detection")
    rec = {"epoch": 3, "acc_present": 0.9, "acc_removed": 0.6, "acc_swapped": 0.2}
    assert bench.judge_truth([rec], True, 4, multilabel=True)["valid"]  # chance 0.5, not 0.25
    assert not bench.judge_truth([{**rec, "acc_present": 0.8}], True, 4, multilabel=True)["valid"]
    clean = {"epoch": 3, "acc_present": 0.8, "acc_removed": 0.8, "acc_swapped": 0.78}
    assert bench.judge_truth([{**clean, "labels_present": 0.8}], False, 4, True)["valid"]
    # every finding must be learned, not only the tied one
    assert not bench.judge_truth([{**clean, "labels_present": 0.7}], False, 4, True)["valid"]
    ml = {"family": "multilabel", "expected_class": 2, "few_class": None}
    assert bench._right_class(ml, {"final_classes": [2], "final_notes": []})
    assert not bench._right_class(ml, {"final_classes": [0, 1], "final_notes": []})
    few = {"family": "few_probes", "expected_class": 0, "few_class": 6}
    assert bench._right_class(few, {"final_classes": [], "final_notes": ["few_probes(3,6)"]})
    assert not bench._right_class(few, {"final_classes": [6], "final_notes": ["drift"]})


@pytest.mark.slow
def test_end_to_end_w1_ground_truth_and_report(tmp_path: Path) -> None:
    bench = _load("bench_detection")
    before = torch.get_num_threads()
    json_path, md_path = tmp_path / "r.json", tmp_path / "r.md"
    try:
        results = bench.main(
            [
                "--worlds",
                "W1",
                "--epochs",
                "3",
                "--n-train",
                "800",
                "--n-val",
                "160",
                "--threads",
                "1",
                "--json",
                str(json_path),
                "--out-md",
                str(md_path),
            ]
        )
    finally:
        torch.set_num_threads(before)
    by_case = {r["case"]: r for r in results}
    assert set(by_case) == {"shortcut", "clean"}
    short, clean = by_case["shortcut"]["final_truth"], by_case["clean"]["final_truth"]
    # Ground truth: the shortcut model fails when the watermark is swapped, the clean one does not.
    assert short["acc_present"] >= 0.85 and short["acc_present"] - short["acc_swapped"] >= 0.3
    assert clean["acc_present"] >= 0.75 and abs(clean["acc_present"] - clean["acc_swapped"]) <= 0.1
    assert by_case["shortcut"]["valid"] and by_case["clean"]["valid"]
    assert by_case["shortcut"]["first_reliance_epoch"] is not None
    assert [r["epoch"] for r in by_case["shortcut"]["truth_per_epoch"]] == [0, 1, 2]
    # The scoring path: both callbacks ran every epoch (plus the baseline), structure of results.
    for r in results:
        assert set(r["modes"]) == {"masks", "nomask"}
        for m in r["modes"].values():
            assert m["runs"] == 3 and m["last_run_epoch"] == 2
            assert isinstance(m["flagged_final"], bool) and isinstance(m["any_alarm"], bool)
            assert set(m["final_kinds"]) <= {"artifact", "background"}
    raw = json.loads(json_path.read_text())
    assert len(raw["results"]) == 2 and "runtime" in raw["meta"]
    text = md_path.read_text()
    assert "## Calibration split" in text and "## Held-out split" not in text
    rows = [ln for ln in text.splitlines() if re.match(r"\| W1 \| (shortcut|clean) \|", ln)]
    assert len(rows) == 4  # {shortcut, clean} x {masks, nomask}
    assert all(len(r.strip("|").split("|")) == 12 for r in rows)
    summary = re.findall(
        r"shortcuts flagged at final epoch: (\d+)/(\d+) \(masks\), (\d+)/(\d+) \(no masks\); "
        r"false alarms on clean controls: (\d+)/(\d+)",
        text,
    )
    assert "| W1 | cnn | 48 | 3 |" in text  # the runtime table
    assert summary and summary[0][1] == "1" and summary[0][3] == "1" and summary[0][5] == "2"
