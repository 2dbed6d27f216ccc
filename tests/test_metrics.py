"""Unit tests of every metric on hand-made maps with known answers."""

from __future__ import annotations

import math

import pytest
import torch

from gradcam_callback import metrics as M


def _maps(*rows: list[float], h: int = 1) -> torch.Tensor:
    """Maps ``[N, h, len/h]`` from flat value lists."""
    t = torch.tensor(rows, dtype=torch.float32)
    return t.view(t.shape[0], h, -1)


def _onehot(h: int, w: int, y: int, x: int) -> torch.Tensor:
    m = torch.zeros(1, h, w)
    m[0, y, x] = 1.0
    return m


# ----------------------------------------------------------------------------- drift
def test_pearson_known_values() -> None:
    a = _maps([1, 2, 3, 4], [1, 2, 3, 4], [1, 2, 3, 4])
    b = _maps([5, 7, 9, 11], [4, 3, 2, 1], [1, 3, 2, 4])
    torch.testing.assert_close(M.pearson(a, b), torch.tensor([1.0, -1.0, 0.8]))


def test_pearson_constant_map_is_nan() -> None:
    a = _maps([0, 0, 0, 0], [2, 2, 2, 2])
    b = _maps([1, 2, 3, 4], [1, 2, 3, 4])
    assert torch.isnan(M.pearson(a, b)).all()


def test_spearman_monotone_and_ties() -> None:
    a = _maps([1, 2, 3, 4], [0, 0, 1, 2])
    b = _maps([1, 8, 27, 64], [0, 1, 1, 2])
    # second pair by hand: ranks (0.5, 0.5, 2, 3) and (0, 1.5, 1.5, 3) -> 3.75 / 4.5
    torch.testing.assert_close(M.spearman(a, b), torch.tensor([1.0, 3.75 / 4.5]))


def test_spearman_ignores_scale_but_not_order() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, 8, generator=g)
    torch.testing.assert_close(M.spearman(a, a.exp() * 3), torch.ones(2))
    torch.testing.assert_close(M.spearman(a, -a), -torch.ones(2))


def test_js_divergence_known_values() -> None:
    a = _maps([1, 1, 0], [1, 0, 0], [0.5, 0.5, 0])
    b = _maps([0, 1, 1], [0, 0, 1], [3, 3, 0])
    # half overlap -> 0.5 bit; disjoint -> 1; same shape at another scale -> 0
    torch.testing.assert_close(M.js_divergence(a, b), torch.tensor([0.5, 1.0, 0.0]))


def test_js_divergence_zero_map_is_nan() -> None:
    out = M.js_divergence(_maps([0, 0, 0], [1, 0, 0]), _maps([1, 0, 0], [1, 0, 0]))
    assert torch.isnan(out[0]) and out[1] == 0


def test_topk_iou_known_values() -> None:
    # 16 pixels, frac 0.25 -> the 4 hottest pixels
    a = torch.zeros(3, 4, 4)
    b = torch.zeros(3, 4, 4)
    a.view(3, -1)[0, 0:4] = torch.tensor([4.0, 3, 2, 1])
    b.view(3, -1)[0, 2:6] = torch.tensor([4.0, 3, 2, 1])  # overlap 2 of 6
    a.view(3, -1)[1, 0:4] = 1.0
    b.view(3, -1)[1, 0:4] = 5.0  # identical regions
    b.view(3, -1)[2, 0] = 1.0  # a is all zero: empty region vs one pixel
    out = M.topk_iou(a, b, frac=0.25)
    torch.testing.assert_close(out, torch.tensor([2 / 6, 1.0, 0.0]))
    assert torch.isnan(M.topk_iou(a[2:], a[2:]))[0]


def test_center_of_mass_and_shift() -> None:
    one = _onehot(5, 9, 2, 7)
    two = torch.zeros(1, 5, 9)
    two[0, 0, 0] = two[0, 4, 8] = 1.0
    com = M.center_of_mass(torch.cat([one, two]))
    torch.testing.assert_close(com, torch.tensor([[2.0, 7.0], [2.0, 4.0]]))
    corner_a, corner_b = _onehot(5, 9, 0, 0), _onehot(5, 9, 4, 8)
    torch.testing.assert_close(M.com_shift(corner_a, corner_b), torch.tensor([1.0]))
    torch.testing.assert_close(M.com_shift(corner_a, corner_a * 7), torch.tensor([0.0]))
    assert torch.isnan(M.com_shift(torch.zeros(1, 5, 9), corner_a)).all()


def test_focus_entropy_known_values() -> None:
    a = _maps([5, 0, 0, 0], [1, 1, 1, 1], [2, 2, 0, 0])
    torch.testing.assert_close(M.focus_entropy(a), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.isnan(M.focus_entropy(torch.zeros(1, 2, 2))).all()


# ----------------------------------------------------------------------------- masks
def test_mass_share_and_enrichment() -> None:
    mask = torch.zeros(4, 4, dtype=torch.bool)
    mask[:2, :2] = True  # a quarter of the image
    uniform = torch.ones(1, 4, 4)
    inside = torch.zeros(1, 4, 4)
    inside[0, :2, :2] = 3.0
    half = torch.zeros(1, 4, 4)
    half[0, 0, 0] = half[0, 3, 3] = 1.0
    maps = torch.cat([uniform, inside, half])
    torch.testing.assert_close(M.mass_share(maps, mask), torch.tensor([0.25, 1.0, 0.5]))
    torch.testing.assert_close(M.enrichment(maps, mask), torch.tensor([1.0, 4.0, 2.0]))
    # per-probe masks
    masks = mask.expand(3, 4, 4).clone()
    masks[2] = ~mask
    torch.testing.assert_close(M.enrichment(maps, masks), torch.tensor([1.0, 4.0, 2 / 3]))


def test_mask_degenerate_cases() -> None:
    maps = torch.cat([torch.ones(1, 4, 4), torch.zeros(1, 4, 4)])
    empty = torch.zeros(4, 4, dtype=torch.bool)
    share = M.mass_share(maps, empty)
    assert share[0] == 0 and torch.isnan(share[1])
    assert torch.isnan(M.enrichment(maps, empty)).all()
    assert torch.isnan(M.pointing_game(maps, ~empty)).all()  # constant maps have no peak


def test_pointing_game() -> None:
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 2:4] = True
    maps = torch.cat([_onehot(8, 8, 3, 3), _onehot(8, 8, 7, 7), _onehot(8, 8, 5, 5)])
    torch.testing.assert_close(M.pointing_game(maps, mask), torch.tensor([1.0, 0.0, 0.0]))
    # 2 px tolerance reaches (5, 5) but not (7, 7)
    out = M.pointing_game(maps, mask, tolerance=2)
    torch.testing.assert_close(out, torch.tensor([1.0, 0.0, 1.0]))


def test_border_and_corner_enrichment() -> None:
    h = w = 16  # border width 0.125 -> 2 px band: 64 - ... area share = 1 - (12*12)/256
    band_share = 1 - 144 / 256
    centre = torch.zeros(1, h, w)
    centre[0, 6:10, 6:10] = 1.0
    frame = M.border_mask(h, w, 0.125).float()[None]
    maps = torch.cat([torch.ones(1, h, w), centre, frame])
    torch.testing.assert_close(M.border_enrichment(maps), torch.tensor([1.0, 0.0, 1 / band_share]))
    corner = torch.zeros(1, h, w)
    corner[0, :4, 12:] = 1.0  # top-right corner, 0.25 x 0.25 of the image
    torch.testing.assert_close(
        M.corner_enrichment(torch.cat([corner, torch.ones(1, h, w)])), torch.tensor([16.0, 1.0])
    )
    assert torch.isnan(M.corner_enrichment(torch.zeros(1, h, w))).all()


# ----------------------------------------------------------------------------- hot spot
def _bump(h: int, w: int, cy: float, cx: float, sigma: float = 2.0) -> torch.Tensor:
    ys = torch.arange(h).float()[:, None]
    xs = torch.arange(w).float()[None, :]
    return torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))


def test_anchored_hotspot_watermark_vs_moving_objects() -> None:
    g = torch.Generator().manual_seed(0)
    n, h, w = 8, 32, 32
    images = torch.rand(n, 3, h, w, generator=g)
    images[:, :, :9, :9] = 0.9  # the same "watermark" pasted top-left in every image
    anchored = torch.stack([_bump(h, w, 4, 4) for _ in range(n)])
    # objects that move: bumps at eight different places
    spots = [(8, 8), (8, 24), (24, 8), (24, 24), (16, 16), (12, 20), (20, 12), (16, 8)]
    moving = torch.stack([_bump(h, w, y, x) for y, x in spots])

    hot = M.anchored_hotspot(anchored, images)
    assert hot.consistency[0] > 10  # every probe piles its mass on the same 5 % of the image
    assert hot.offset[0] > 0.6  # near the top-left corner
    assert hot.stability[0] > 0.95  # identical pixels under it
    assert hot.region[:, 4, 4].all() and not hot.region[:, 16, 16].any()

    cold = M.anchored_hotspot(moving, images)
    assert cold.consistency[0] < 0.5 * hot.consistency[0]
    assert cold.stability[0] < 0.3  # random pixels move under the hot spot


def test_anchored_hotspot_groups_and_zero_maps() -> None:
    n, h, w = 8, 16, 16
    images = torch.zeros(n, 1, h, w)
    images[:, :, :, :8] = torch.arange(n).float()[:, None, None, None]  # left half varies
    maps = torch.stack([_bump(h, w, 2, 13, 1.0)] * 4 + [_bump(h, w, 13, 2, 1.0)] * 4)
    maps[3] = 0.0  # an untrained-style map: excluded from its group
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    hot = M.anchored_hotspot(maps, images, groups, num_groups=2, min_group=3)
    torch.testing.assert_close(hot.size, torch.tensor([3.0, 4.0]))
    assert hot.group_region[0, 2, 13] and hot.group_region[1, 13, 2]
    assert not hot.region[3].any() and torch.isnan(hot.share[3])
    # right half is constant across images, left half is not
    torch.testing.assert_close(hot.stability[0], torch.tensor(1.0))
    torch.testing.assert_close(hot.stability[1], torch.tensor(0.0))
    hot4 = M.anchored_hotspot(maps, images, groups, num_groups=2, min_group=4)
    assert torch.isnan(hot4.consistency[0]) and not torch.isnan(hot4.consistency[1])
    zero = M.anchored_hotspot(torch.zeros(n, h, w), images)
    assert torch.isnan(zero.consistency).all() and not zero.region.any()


def _marked_images(
    groups: torch.Tensor, carries: torch.Tensor, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise images ``[N, 3, 24, 24]`` with a bright 4x4 square that moves over the whole image
    from image to image (the object) and, in the images ``carries`` marks, a fixed 4x6 "stamp" in the top-right corner;
    returns the images and the stamp's mask ``[24, 24]``."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = groups.numel(), 24, 24
    images = 0.2 * torch.rand(n, 3, h, w, generator=g)
    corners = torch.randint(0, 20, (n, 2), generator=g)
    for i, (y, x) in enumerate(corners.tolist()):
        images[i, :, y : y + 4, x : x + 4] = 1.0
    stamp = torch.zeros(h, w, dtype=torch.bool)
    stamp[1:5, 17:23] = True
    images[carries[:, None, None, None] & stamp[None, None].expand(n, 3, h, w)] = 0.7
    return images, stamp


def test_class_marks_find_a_fixed_place_mark_of_one_class_or_a_group() -> None:
    groups = torch.arange(4).repeat_interleave(6)  # four classes of six images
    # the stamp on every image of class 1 and on five of six of class 2 (a group shortcut),
    # on one image of class 0, on none of class 3
    carries = (groups == 1) | (groups == 2)
    carries[13] = False  # class 2: one image without it
    carries[0] = True  # class 0: one image with it
    images, stamp = _marked_images(groups, carries)
    marks = M.class_marks(images, groups, 4)
    assert marks.shape == (4, 24, 24) and marks.dtype == torch.bool
    for g in (1, 2):  # the mark of the group, exactly: not the moving object, not the noise
        assert torch.equal(marks[g], stamp), g
    assert not marks[0].any() and not marks[3].any()
    # 5 of 6 images (0.83) against a median other class (0.17): a contrast of 0.67
    assert torch.equal(M.class_marks(images, groups, 4, contrast=0.6)[2], stamp)
    assert not M.class_marks(images, groups, 4, contrast=0.7)[2].any()


def test_class_marks_ignore_a_mark_independent_of_the_label_and_small_groups() -> None:
    groups = torch.arange(3).repeat_interleave(8)
    carries = torch.arange(24) % 2 == 0  # half of every class: the clean control
    images, _ = _marked_images(groups, carries, seed=1)
    assert not M.class_marks(images, groups, 3).any()
    carries = groups == 0
    images, stamp = _marked_images(groups, carries, seed=2)
    assert torch.equal(M.class_marks(images, groups, 3)[0], stamp)
    # a class under min_group images gets no mark; one class has nothing to differ from
    assert not M.class_marks(images, groups, 3, min_group=9).any()
    assert not M.class_marks(images, torch.zeros(24, dtype=torch.long), 1).any()
    assert not M.class_marks(torch.zeros(24, 3, 8, 8), groups, 3).any()  # nothing varies


def test_class_marks_drop_a_lone_pixel_and_a_mark_under_min_pixels() -> None:
    groups = torch.arange(2).repeat_interleave(6)
    carries = groups == 1
    images, _ = _marked_images(groups, torch.zeros(12, dtype=torch.bool), seed=3)
    images[carries, :, 20, 3] = 0.7  # one pixel shared by class 1's images
    images[carries, :, 10:12, 20] = 0.7  # and two neighbouring ones
    marks = M.class_marks(images, groups, 2, min_pixels=1)
    assert not marks[1, 20, 3] and marks[1, 10:12, 20].all() and int(marks[1].sum()) == 2
    assert not M.class_marks(images, groups, 2).any()  # 2 pixels: under a 3x3 patch's worth
    images[carries, :, 10:13, 20:23] = 0.7  # a 3x3 patch: a mark
    assert int(M.class_marks(images, groups, 2)[1].sum()) == 9


def test_grow_region_follows_allowed_pixels_and_respects_max_area() -> None:
    allowed = torch.zeros(16, 16, dtype=torch.bool)
    allowed[14:, :] = True  # a 2-px band along the bottom: 32 px, 12.5 % of the image
    seed = torch.zeros(1, 16, 16, dtype=torch.bool)
    seed[0, 14, 7] = True
    torch.testing.assert_close(M.grow_region(seed, allowed, max_area=0.25)[0], allowed)
    # at most 12.8 px: 2 steps give the 2 x 5 block around the seed, a third would give 14
    small = M.grow_region(seed, allowed, max_area=0.05)[0]
    assert int(small.sum()) == 10 and small[14:, 5:10].all()


# ----------------------------------------------------------------------------- causal
def test_erase_fills_from_surroundings() -> None:
    h = w = 16
    flat = torch.full((2, 3, h, w), 0.3)
    region = torch.zeros(h, w, dtype=torch.bool)
    region[2:8, 3:9] = True
    stamped = flat.clone()
    stamped[:, :, 2:8, 3:9] = 5.0
    out = M.erase(stamped, region)
    torch.testing.assert_close(out, flat)  # the stamp is gone, the constant background back
    ramp = torch.arange(w).float().expand(1, 1, h, w).clone()
    filled = M.erase(ramp, region)
    assert (filled - ramp).abs().max() < 1.0  # a smooth ramp is continued, not flattened
    assert torch.equal(filled[..., ~region], ramp[..., ~region])


def test_erase_on_a_coarser_grid_matches_the_full_size_fill() -> None:
    h = w = 64
    region = torch.zeros(2, h, w, dtype=torch.bool)
    region[0, 5:21, 30:50] = True
    region[1, 40:43, 2:60] = True  # a thin band: thinner than one cell of the 16x16 grid
    stamped = torch.full((2, 3, h, w), 0.3)
    stamped[region[:, None].expand(-1, 3, -1, -1)] = 5.0
    coarse = M.erase(stamped, region, fill_size=(16, 16))
    torch.testing.assert_close(coarse, torch.full_like(stamped, 0.3))  # no stamp pixel leaks
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    smooth = (xx / w + (yy / h) ** 2).expand(2, 3, h, w).clone()
    full, coarse = M.erase(smooth, region), M.erase(smooth, region, fill_size=(16, 16))
    assert torch.equal(coarse[..., ~region[0]][0], smooth[..., ~region[0]][0])  # outside kept
    assert (coarse - full).abs().max() < 0.05 * float(smooth.max() - smooth.min())
    assert torch.equal(M.erase(smooth, region, fill_size=(64, 64)), full)  # not smaller: full


def test_erase_degenerate_regions() -> None:
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    assert torch.equal(M.erase(x, torch.zeros(8, 8, dtype=torch.bool)), x)
    assert torch.equal(M.erase(x, torch.ones(2, 8, 8, dtype=torch.bool)), torch.zeros_like(x))


def test_erasure_effect_flips_a_corner_reader() -> None:
    def score_fn(images: torch.Tensor) -> torch.Tensor:
        corner = images[:, 0, :4, :4].mean((1, 2))
        return torch.stack([torch.zeros_like(corner), 10 * corner], dim=1)

    images = torch.zeros(2, 1, 16, 16)
    images[0, :, :4, :4] = 1.0  # probe 0 shows the corner mark, probe 1 does not
    region = torch.zeros(16, 16, dtype=torch.bool)
    region[:4, :4] = True
    flipped, drop, evidence = M.erasure_effect(score_fn, images, region, torch.tensor([1, 1]))
    torch.testing.assert_close(flipped, torch.tensor([1.0, 0.0]))
    expected = torch.tensor([0.0, 10.0]).softmax(0)[1] - 0.5
    torch.testing.assert_close(drop, torch.stack([expected, torch.tensor(0.0)]))
    # probe 0 lost all of its log-odds (10 -> 0); probe 1 had none to lose (even odds)
    assert evidence[0] == 1.0 and torch.isnan(evidence[1])


def test_log_odds_and_evidence_drop() -> None:
    base = torch.tensor([[0.0, 4.0], [0.0, 4.0], [0.0, 4.0], [2.0, 0.0], [1.0, 1.0]])
    after = torch.tensor([[0.0, 1.0], [0.0, -8.0], [0.0, 6.0], [0.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([1, 1, 1, 0, 0])
    torch.testing.assert_close(M.log_odds(base, t), torch.tensor([4.0, 4, 4, 2, 0]))
    three = torch.log(torch.tensor([[0.5, 0.25, 0.25]]))
    torch.testing.assert_close(M.log_odds(three, torch.tensor([0])), torch.tensor([0.0]))
    ev = M.evidence_drop(base, after, t)
    # 4 -> 1: three quarters lost; 4 -> -8: flipped (clamped to 1); 4 -> 6: gained half
    torch.testing.assert_close(ev[:4], torch.tensor([0.75, 1.0, -0.5, 1.0]))
    assert torch.isnan(ev[4])


@pytest.mark.parametrize(
    "fn",
    [M.pearson, M.spearman, M.js_divergence, M.topk_iou, M.com_shift],
)
def test_pairwise_metrics_never_crash_on_degenerate_maps(fn) -> None:
    z = torch.zeros(3, 8, 8)
    c = torch.ones(3, 8, 8)
    for a, b in [(z, z), (z, c), (c, c)]:
        out = fn(a, b)
        assert out.shape == (3,) and out.dtype == torch.float32


def test_values_stay_in_documented_ranges() -> None:
    g = torch.Generator().manual_seed(2)
    a = torch.rand(16, 12, 12, generator=g).relu() ** 4
    b = torch.rand(16, 12, 12, generator=g) ** 4
    assert ((M.pearson(a, b) >= -1) & (M.pearson(a, b) <= 1)).all()
    assert ((M.js_divergence(a, b) >= 0) & (M.js_divergence(a, b) <= 1)).all()
    assert ((M.com_shift(a, b) >= 0) & (M.com_shift(a, b) <= 1)).all()
    ent = M.focus_entropy(a)
    assert ((ent >= 0) & (ent <= 1)).all()
    assert math.isclose(float(M.border_enrichment(torch.ones(1, 12, 12))[0]), 1.0, rel_tol=1e-5)


def test_cell_mask_is_the_mask_as_a_coarse_map_sees_it() -> None:
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 14, 2:14] = True  # a 1-px line along the bottom
    # probe 1: empty
    cells = M.cell_mask(mask, (4, 4))
    assert cells.shape == (2, 16, 16)
    torch.testing.assert_close(cells[0, 12:].all(), torch.tensor(True))  # the whole row of cells
    assert not cells[0, :12].any() and not cells[1].any()
    # a map with a cell per pixel sees the mask as it is; a finer map is read at the output size
    torch.testing.assert_close(M.cell_mask(mask, (16, 16)), mask)
    assert M.cell_mask(mask, (64, 64), (8, 8))[0, 7, 1:7].all()
    assert M.cell_mask(mask[0], (4, 4)).shape == (16, 16)
    # a stride-4 map that reads a line on the edge of its cells (all its mass on that row of
    # cells), upsampled bilinearly: the line's pixels get the ramp between two cells, the cells
    # it touches their whole value; a uniform cell would read the same both ways
    edge = torch.zeros(1, 16, 16, dtype=torch.bool)
    edge[0, 12, :] = True
    maps = torch.zeros(1, 4, 4)
    maps[0, 3, :] = 1.0
    up = torch.nn.functional.interpolate(maps[:, None], size=(16, 16), mode="bilinear")[:, 0]
    at_cells = M.enrichment(up, M.cell_mask(edge, (4, 4)))
    at_pixels = M.enrichment(up, edge)
    assert float(at_cells) > 1.3 * float(at_pixels) > 1.0
    flat = torch.nn.functional.interpolate(maps[:, None], size=(16, 16), mode="nearest")[:, 0]
    torch.testing.assert_close(
        M.enrichment(flat, M.cell_mask(edge, (4, 4))), M.enrichment(flat, edge)
    )
    # a map that ignores the line scores 0 both ways
    away = torch.zeros(1, 16, 16)
    away[0, :4, :4] = 1.0
    assert float(M.enrichment(away, M.cell_mask(mask[:1], (4, 4)))) == 0.0


def test_shift_tolerant_stability_sees_a_jittered_token_and_not_noise() -> None:
    g = torch.Generator().manual_seed(0)
    n, h, w = 12, 32, 32
    images = torch.rand(n, 3, h, w, generator=g) * 0.5
    shifts = torch.randint(-2, 3, (n, 2), generator=g)
    for i, (dy, dx) in enumerate(shifts.tolist()):
        images[i, :, 4 + dy : 9 + dy, 22 + dx : 27 + dx] = 1.0  # a 5x5 token, +-2 px
    maps = torch.stack([_bump(h, w, 6, 24, 2.0) for _ in range(n)])
    plain = M.anchored_hotspot(maps, images)
    tolerant = M.anchored_hotspot(maps, images, shift=2)
    assert plain.pixel_stability is not None and tolerant.shift_stability is not None
    torch.testing.assert_close(plain.stability, plain.pixel_stability)  # shift 0: unchanged
    torch.testing.assert_close(tolerant.pixel_stability, plain.pixel_stability)
    assert float(tolerant.shift_stability[0]) > float(plain.pixel_stability[0]) + 0.2
    torch.testing.assert_close(
        tolerant.stability, torch.fmax(tolerant.pixel_stability, tolerant.shift_stability)
    )
    # the footprint is dilated by the shift where the shift-tolerant reading is the higher one
    assert tolerant.group_footprint.sum() > plain.group_footprint.sum()
    # the same spot over pixels that are noise everywhere: no stability, shift or not
    noise = torch.rand(n, 3, h, w, generator=g)
    cold = M.anchored_hotspot(maps, noise, shift=2)
    assert float(cold.stability[0]) < 0.2
    # the plain deviation equals shift_tolerant_std with shift 0
    wts = torch.ones(n, 1)
    std0 = M.shift_tolerant_std(images, wts, 0)
    torch.testing.assert_close(std0[0], images.std(0, unbiased=False).mean(0).flatten())
    # the local extremes are those of a stride-1 max pool (computed faster)
    hi = torch.nn.functional.max_pool2d(images, 5, 1, 2)
    lo = -torch.nn.functional.max_pool2d(-images, 5, 1, 2)
    ref = torch.minimum(hi.std(0, unbiased=False), lo.std(0, unbiased=False)).mean(0).flatten()
    torch.testing.assert_close(
        M.shift_tolerant_std(images, wts / n, 2)[0], ref, atol=1e-5, rtol=1e-4
    )
    # a constant image set has no deviation, shifted or not
    assert float(M.shift_tolerant_std(torch.ones(n, 3, h, w), wts, 2).abs().max()) == 0.0


def test_drift_from_map_stats_matches_independent_references() -> None:
    # ReLU'd maps with zero plateaus (ties), checked against scipy's formulas, not our own
    stats_mod = pytest.importorskip("scipy.stats")
    dist_mod = pytest.importorskip("scipy.spatial.distance")
    g = torch.Generator().manual_seed(1)
    a = (torch.randn(4, 6, 7, generator=g) - 0.3).clamp_min(0)
    b = (torch.randn(4, 6, 7, generator=g) - 0.3).clamp_min(0)
    got = M.drift(M.MapStats(a), M.MapStats(b))
    assert list(got) == ["pearson", "spearman", "js", "iou", "com_shift"]
    for i in range(4):
        x, y = a[i].flatten().double().numpy(), b[i].flatten().double().numpy()
        assert float(got["pearson"][i]) == pytest.approx(stats_mod.pearsonr(x, y)[0], abs=1e-5)
        assert float(got["spearman"][i]) == pytest.approx(stats_mod.spearmanr(x, y)[0], abs=1e-5)
        js = dist_mod.jensenshannon(x / x.sum(), y / y.sum(), base=2) ** 2
        assert float(got["js"][i]) == pytest.approx(js, abs=1e-5)
    # bit for bit the standalone functions, which a monitor run's cache must not change
    for name, fn in [("pearson", M.pearson), ("spearman", M.spearman),
                     ("js", M.js_divergence), ("iou", M.topk_iou), ("com_shift", M.com_shift)]:  # fmt: skip
        assert torch.equal(got[name], fn(a, b)), name
    assert torch.equal(M.MapStats(a).entropy, M.focus_entropy(a))
    # an all-zero map keeps its NaN through the cached pieces
    z = M.drift(M.MapStats(torch.zeros(1, 6, 7)), M.MapStats(b[:1]))
    assert all(bool(torch.isnan(z[k]).all()) for k in ("pearson", "spearman", "js", "com_shift"))
    assert float(z["iou"][0]) == 0.0


@pytest.mark.parametrize("px", [1, 2, 4])
def test_dilate_equals_a_stride_one_max_pool(px: int) -> None:
    g = torch.Generator().manual_seed(px)
    mask = torch.rand(3, 9, 13, generator=g) > 0.9
    pooled = torch.nn.functional.max_pool2d(mask[:, None].float(), 2 * px + 1, 1, px)[:, 0] > 0
    assert torch.equal(M.dilate(mask, px), pooled)
    assert M.dilate(mask, 0) is mask


def test_hotspot_with_kept_local_extremes_equals_the_computed_ones() -> None:
    g = torch.Generator().manual_seed(3)
    images = torch.rand(6, 3, 20, 20, generator=g)
    maps = (torch.rand(6, 20, 20, generator=g) - 0.4).clamp_min(0)
    groups = torch.tensor([0, 0, 0, 1, 1, 1])
    hi, lo = M.local_extremes(images, 2)
    pooled = torch.nn.functional.max_pool2d(images, 5, 1, 2)
    assert torch.equal(hi, pooled) and torch.equal(
        lo, -torch.nn.functional.max_pool2d(-images, 5, 1, 2)
    )
    a = M.anchored_hotspot(maps, images, groups, 2, min_group=2, shift=2)
    b = M.anchored_hotspot(maps, images, groups, 2, min_group=2, shift=2, extremes=(hi, lo))
    for field in ("stability", "shift_stability", "group_footprint", "consistency"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
