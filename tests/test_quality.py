"""Known-answer tests for the sanity / faithfulness checks and Guided Grad-CAM."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradcam_callback.engine import GradCAM
from gradcam_callback.guided import guided_backprop, guided_gradcam
from gradcam_callback.quality import (
    deletion_curve,
    occlusion_agreement,
    occlusion_map,
    randomization_check,
    spearman_maps,
    ssim_maps,
)

SIZE = 24


# --------------------------------------------------------------------------- toy world
def _blobs(n: int, seed: int) -> tuple[Tensor, Tensor, Tensor]:
    """Noise plus one Gaussian blob; its colour (red / green) is the class."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(SIZE), torch.arange(SIZE), indexing="ij")
    cy = torch.randint(6, SIZE - 6, (n,), generator=g)
    cx = torch.randint(6, SIZE - 6, (n,), generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    blob = torch.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 8.0)
    colour = torch.zeros(n, 3)
    colour[torch.arange(n), labels] = 1.0
    colour[:, 2] = 0.3
    x = 0.15 * torch.randn(n, 3, SIZE, SIZE, generator=g) + blob[:, None] * colour[..., None, None]
    return x, labels, blob


def _cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 2),
    )


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Any:
    """One intra-op thread: tiny tensors, and the CI box is shared (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def world() -> tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A tiny CNN trained (~1 s) to classify the blob's colour, and 16 probes."""
    torch.manual_seed(0)
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=5e-3)
    for step in range(40):
        x, y, _ = _blobs(32, seed=100 + step)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().requires_grad_(True)
    for p in model.parameters():
        p.grad = None
    xp, yp, blob = _blobs(16, seed=1)
    with torch.no_grad():
        assert (model(xp).argmax(1) == yp).all()
    return model, xp, yp, blob


def _snapshot(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_untouched(model: nn.Module, before: dict[str, Tensor], modes: list[bool]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks


def _edge_explainer(_model: nn.Module, images: Tensor, _targets: Any) -> Tensor:
    """Sobel edge magnitude of the input: does not depend on the model at all."""
    gray = images.mean(1, keepdim=True)
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]]).view(1, 1, 3, 3)
    gx = F.conv2d(gray, kx, padding=1)
    gy = F.conv2d(gray, kx.transpose(-1, -2), padding=1)
    return (gx**2 + gy**2).sqrt()[:, 0]


# --------------------------------------------------------------------------- similarity
def test_spearman_maps_known_values() -> None:
    a = torch.tensor([[1.0, 2, 2, 3], [1, 2, 3, 4]]).view(2, 2, 2)
    b = torch.tensor([[1.0, 2, 3, 4], [4, 3, 2, 1]]).view(2, 2, 2)
    # ranks (0, 1.5, 1.5, 3) vs (0, 1, 2, 3): cov 4.5 / sqrt(4.5 * 5)
    torch.testing.assert_close(spearman_maps(a, b), torch.tensor([math.sqrt(0.9), -1.0]))


def test_ssim_maps_known_values() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 16, 16, generator=g)
    torch.testing.assert_close(ssim_maps(x, x), torch.ones(3))
    # constant maps: no variance, SSIM = (2 a b + C1) / (a^2 + b^2 + C1)
    a, b, c1 = 0.2, 0.7, 0.01**2
    got = ssim_maps(torch.full((1, 9, 9), a), torch.full((1, 9, 9), b))
    torch.testing.assert_close(got, torch.tensor([(2 * a * b + c1) / (a * a + b * b + c1)]))
    # batched equals per pair; unrelated noise is far from 1
    y = torch.rand(3, 16, 16, generator=g)
    batched = ssim_maps(x, y)
    single = torch.cat([ssim_maps(x[i : i + 1], y[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(batched, single)
    assert (batched < 0.2).all()


# --------------------------------------------------------------------------- randomisation
def test_randomization_trained_gradcam_passes_edge_explainer_fails(world: Any) -> None:
    model, xp, yp, _ = world
    before, modes = _snapshot(model), [m.training for m in model.modules()]
    rng = torch.random.get_rng_state()
    rep = randomization_check(model, xp, yp)
    assert rep.stages == ["9", "5", "2", "0"]  # head first, then deeper convs
    assert rep.spearman.shape == rep.ssim.shape == (4, 16)
    assert rep.passed and rep.similarity < 0.3
    assert rep.spearman[0].nan_to_num(0.0).mean() < 0  # a random head scrambles the maps
    assert rep.ssim.mean() < 0.4
    summary = rep.summary()
    assert summary["passed"] == 1.0 and set(summary) >= {"spearman/9", "ssim/0", "similarity"}

    edge = randomization_check(model, xp, None, explainer=_edge_explainer)
    assert not edge.passed and edge.similarity > 0.999
    torch.testing.assert_close(edge.spearman, torch.ones(4, 16))
    torch.testing.assert_close(edge.ssim, torch.ones(4, 16))

    again = randomization_check(model, xp, yp)  # same seed, same answer
    torch.testing.assert_close(again.spearman, rep.spearman, equal_nan=True)
    other = randomization_check(model, xp, yp, seed=1).spearman
    assert not torch.allclose(other, rep.spearman, equal_nan=True)
    _assert_untouched(model, before, modes)
    assert torch.equal(torch.random.get_rng_state(), rng)  # no global RNG draws


def test_randomization_explicit_stages_keep_maps_and_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).train()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    before, modes = _snapshot(model), [m.training for m in model.modules()]
    rep = randomization_check(model, x, [0, 2], stages=["7", ["3", "1"]], keep_maps=True)
    assert rep.stages == ["7", "3+1"]
    assert rep.maps is not None and rep.maps.shape == (3, 2, 8, 8)
    torch.testing.assert_close(rep.maps[0], GradCAM(model)(x, [0, 2]))
    _assert_untouched(model, before, modes)  # BN running stats included


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        return torch.relu(x + self.bn(self.conv(x)))


class _ResNetLike(nn.Module):
    """torchvision ResNet naming, defined out of forward order (fc before the stem)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.layer1 = nn.Sequential(_Block(4), _Block(4))
        self.layer2 = nn.Sequential(_Block(4), _Block(4))

    def forward(self, x: Tensor) -> Tensor:
        h = self.layer2(self.layer1(torch.relu(self.bn1(self.conv1(x)))))
        return self.fc(h.mean(dim=(2, 3)))


def test_randomization_auto_stages_cascade_from_the_top() -> None:
    torch.manual_seed(0)
    model = _ResNetLike().eval()
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    coarse = randomization_check(model, x, target_layer="layer2", max_stages=5)
    assert coarse.stages == ["fc", "layer2", "layer1", "bn1", "conv1"]
    fine = randomization_check(model, x, target_layer="layer2", max_stages=8)
    assert fine.stages == [
        "fc", "layer2.1", "layer2.0", "layer1.1", "layer1.0", "bn1", "conv1"
    ]  # fmt: skip
    merged = randomization_check(model, x, target_layer="layer2", max_stages=2)
    assert merged.stages == ["fc..layer2", "layer1..conv1"]


# --------------------------------------------------------------------------- deletion / insertion
class _RegionReader(nn.Module):
    """Logits ``[mean of the pixels in the top-left 4x4 square, 0]``: a planted dependency."""

    def forward(self, x: Tensor) -> Tensor:
        s = x[:, :, :4, :4].mean(dim=(1, 2, 3))
        return torch.stack([s, torch.zeros_like(s)], 1)


def test_deletion_curve_planted_region_exact() -> None:
    x = torch.ones(3, 2, 16, 16)  # the region is 16 of 256 pixels = one step of 16
    region = torch.zeros(3, 16, 16)
    region[:, :4, :4] = 1.0
    rand = torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(0))
    reader = _RegionReader().train()
    kw: dict[str, Any] = {"steps": 16, "softmax": False}
    first = deletion_curve(reader, x, region + 0.01 * rand, 0, **kw)
    last = deletion_curve(reader, x, -region - 0.01 * rand, 0, **kw)
    random = deletion_curve(reader, x, rand, 0, **kw)
    torch.testing.assert_close(first.fractions, torch.linspace(0, 1, 17))
    expected_first = torch.zeros(17, 3)
    expected_first[0] = 1.0
    torch.testing.assert_close(first.scores, expected_first)
    torch.testing.assert_close(first.auc, torch.full((3,), 1 / 32))
    torch.testing.assert_close(last.auc, torch.full((3,), 1 - 1 / 32))
    assert ((random.auc > 0.3) & (random.auc < 0.7)).all()  # about 0.5 on average
    assert reader.training  # mode restored
    ins = deletion_curve(reader, x, region, 0, mode="insertion", baseline=0.0, **kw)
    torch.testing.assert_close(ins.auc, torch.full((3,), 1 - 1 / 32))
    chunked = deletion_curve(reader, x, rand, 0, batch_size=5, **kw)  # 51 images in 11 calls
    torch.testing.assert_close(chunked.scores, random.scores)


def test_deletion_curve_gradcam_beats_random_on_trained_model(world: Any) -> None:
    model, xp, yp, _ = world
    cam = GradCAM(model)(xp, yp)
    rand = torch.rand(cam.shape, generator=torch.Generator().manual_seed(3))
    rng = torch.random.get_rng_state()
    d_cam = deletion_curve(model, xp, cam, yp)
    d_rand = deletion_curve(model, xp, rand, yp)
    d_rev = deletion_curve(model, xp, -cam, yp)
    assert d_cam.auc.mean() + 0.15 < d_rand.auc.mean() < d_rev.auc.mean()
    assert (d_cam.auc < d_rand.auc).all() and (d_cam.auc < d_rev.auc).all()
    logit = deletion_curve(model, xp, cam, yp, softmax=False)  # logits do not saturate
    assert logit.auc.mean() < 0.5 * deletion_curve(model, xp, rand, yp, softmax=False).auc.mean()
    i_cam = deletion_curve(model, xp, cam, yp, mode="insertion", baseline=0.0, softmax=False)
    i_rand = deletion_curve(model, xp, rand, yp, mode="insertion", baseline=0.0, softmax=False)
    assert i_cam.auc.mean() > i_rand.auc.mean() + 1.0  # logits
    assert torch.equal(torch.random.get_rng_state(), rng)


# --------------------------------------------------------------------------- occlusion
class _LinearReader(nn.Module):
    def __init__(self, weight: Tensor) -> None:
        super().__init__()
        self.weight = weight

    def forward(self, x: Tensor) -> Tensor:
        s = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([s, -s], 1)


def test_occlusion_map_exact_on_a_linear_model() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g, dtype=torch.float64)
    w = torch.rand(1, 3, 16, 16, generator=g, dtype=torch.float64)
    reader = _LinearReader(w)
    # non-overlapping 4x4 patches, zero fill: each pixel gets its patch's contribution
    occ = occlusion_map(reader, x, 0, patch=4, stride=4, fill=0.0)
    contrib = F.avg_pool2d((x * w).sum(1, keepdim=True), 4) * 16
    expected = contrib.repeat_interleave(4, 2).repeat_interleave(4, 3)[:, 0]
    torch.testing.assert_close(occ, expected.float())
    # overlapping windows (5x5, stride 3, border-aligned last row): brute force reference
    occ2 = occlusion_map(reader, x, 0, patch=5, stride=3, fill=0.0, batch_size=7)
    starts = [0, 3, 6, 9, 11]
    acc = torch.zeros(2, 16, 16, dtype=torch.float64)
    cnt = torch.zeros(16, 16, dtype=torch.float64)
    for y0 in starts:
        for x0 in starts:
            c = (x * w)[:, :, y0 : y0 + 5, x0 : x0 + 5].sum(dim=(1, 2, 3))
            acc[:, y0 : y0 + 5, x0 : x0 + 5] += c[:, None, None]
            cnt[y0 : y0 + 5, x0 : x0 + 5] += 1
    torch.testing.assert_close(occ2, (acc / cnt).float())


def test_occlusion_agrees_with_gradcam_on_one_blob(world: Any) -> None:
    model, xp, yp, blob = world
    cam = GradCAM(model)(xp, yp)
    occ = occlusion_map(model, xp, yp, patch=6, stride=3)
    assert occ.shape == (16, SIZE, SIZE)
    agree = occlusion_agreement(cam, occ)
    mismatched = occlusion_agreement(cam, occ.roll(1, 0))  # another probe's occlusion map
    assert agree.min() > 0.6
    assert agree.mean() > mismatched.mean() + 0.5
    # both peak on the blob (within 3 px of its centre)
    centre = torch.stack([blob.flatten(1).argmax(1) // SIZE, blob.flatten(1).argmax(1) % SIZE], 1)
    for m in (occ, cam):
        idx = m.flatten(1).argmax(1)
        peak = torch.stack([idx // SIZE, idx % SIZE], 1)
        assert (peak - centre).abs().amax(1).max() <= 3
    coarse = F.avg_pool2d(occ[:, None], 4)[:, 0]  # resized to the CAM's size inside
    assert occlusion_agreement(cam, coarse).mean() > 0.6


# --------------------------------------------------------------------------- guided backprop
class _RefGuidedReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx: Any, g: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        return g * (x > 0) * (g > 0)


class _RefReLU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return _RefGuidedReLU.apply(x)


def _reference_guided(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Per image, on a copy whose nn.ReLU modules are swapped for the textbook guided ReLU."""
    ref = copy.deepcopy(model).eval()
    for name, m in list(ref.named_modules()):
        if isinstance(m, nn.ReLU):
            setattr(ref, name, _RefReLU())  # flat Sequential: names are attributes
    out = []
    for i in range(images.shape[0]):
        x = images[i : i + 1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(ref(x)[0, targets[i]], x)
        out.append(g)
    return torch.cat(out)


def _small_net(inplace: bool) -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    ).double()


class _FunctionalNet(nn.Module):
    """The same net calling ``relu_`` as a statement and ``F.relu``: no nn.ReLU modules."""

    def __init__(self, seq: nn.Sequential) -> None:
        super().__init__()
        self.c1, self.c2, self.fc = seq[0], seq[2], seq[5]

    def forward(self, x: Tensor) -> Tensor:
        h = self.c1(x)
        h.relu_()
        return self.fc(F.relu(self.c2(h)).flatten(1))


def test_guided_backprop_by_hand() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).double()
    x = torch.randn(5, 1, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    w1, b1, w2 = net[1].weight, net[1].bias, net[3].weight
    h = x.flatten(1) @ w1.T + b1
    c = torch.tensor([0, 1, 1, 0, 1])
    gh = w2[c].clamp_min(0) * (h > 0)  # only positive gradients, only where the ReLU was on
    expected = (gh @ w1).view(5, 1, 2, 2).detach()
    torch.testing.assert_close(guided_backprop(net, x, c), expected.float())


def test_guided_backprop_reference_batched_inplace_untouched() -> None:
    net = _small_net(inplace=False)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, 1])
    net.train()
    before, modes = _snapshot(net), [m.training for m in net.modules()]
    gb = guided_backprop(net, x, t)
    assert gb.shape == (4, 2, 6, 6) and gb.dtype == torch.float32
    torch.testing.assert_close(gb, _reference_guided(net, x, t).float())
    torch.testing.assert_close(gb[1:3], guided_backprop(net, x[1:3], t[1:3]))
    inplace = _small_net(inplace=True)
    torch.testing.assert_close(guided_backprop(inplace, x, t), gb)
    torch.testing.assert_close(guided_backprop(_FunctionalNet(inplace), x, t), gb)
    _assert_untouched(net, before, modes)
    # outside the call the ReLUs are plain again: the vanilla gradient differs from guided
    xg = x.clone().requires_grad_(True)
    (vanilla,) = torch.autograd.grad(net(xg)[torch.arange(4), t].sum(), xg)
    assert not torch.allclose(vanilla.float(), gb)
    assert all(p.grad is None for p in net.parameters())


def test_guided_gradcam_batched(world: Any) -> None:
    model, xp, yp, _ = world
    engine = GradCAM(model)
    ggc = guided_gradcam(engine, xp[:4])  # predicted class (= labels here)
    assert ggc.shape == (4, 3, SIZE, SIZE)
    expected = guided_backprop(model, xp[:4], yp[:4]) * engine(xp[:4], yp[:4])[:, None]
    torch.testing.assert_close(ggc, expected)
    torch.testing.assert_close(ggc[2:3], guided_gradcam(engine, xp[2:3], yp[2:3]))
    assert all(p.grad is None for p in model.parameters())


def test_everything_runs_inside_inference_mode(world: Any) -> None:
    """Lightning's validation hooks run under inference mode; the checks must still work."""
    model, xp, yp, _ = world
    x, y = xp[:3], yp[:3]
    cam = GradCAM(model)(x, y)
    plain = (
        guided_backprop(model, x, y),
        randomization_check(model, x, y).spearman,
        deletion_curve(model, x, cam, y, steps=4).scores,
        occlusion_map(model, x, y, patch=8, stride=8),
    )
    with torch.inference_mode():
        xi = x.clone()
        inside = (
            guided_backprop(model, xi, y),
            randomization_check(model, xi, y).spearman,
            deletion_curve(model, xi, cam, y, steps=4).scores,
            occlusion_map(model, xi, y, patch=8, stride=8),
        )
    for a, b in zip(plain, inside):
        torch.testing.assert_close(a, b, equal_nan=True)
