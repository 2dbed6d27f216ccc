"""Correctness tests for :mod:`gradcam_callback.engine` (CPU, tiny models, small inputs).

Every map is checked against an independent computation: closed forms (toy example, CAM),
finite differences, reference formulas written here in float64 on activations and gradients
captured by the test's own hooks, and ``pytorch_grad_cam`` where the two agree by definition.
"""

from __future__ import annotations

import copy
import random
from collections import namedtuple
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gradcam_callback.engine import METHODS, CAMResult, GradCAM, normalize_maps

# ----------------------------------------------------------------------------- helpers


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> object:
    """Tiny models on a shared CPU: one intra-op thread is faster (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class SpatialSum(nn.Module):
    """``[N, K, h, w] -> [N, K]``: sum over space (gradients of order one, unlike a mean)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sum(dim=(2, 3))


def tiny_cnn(seed: int = 0, inplace: bool = False, classes: int = 4, in_ch: int = 3) -> nn.Module:
    """Conv net with a nonlinear head above the target ``"2"`` (maps ``[N, 8, H/2, W/2]``).

    The head (conv, tanh, pooling) makes the gradient vary over space, so that the methods differ.
    """
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=2),  # "2": target
        nn.ReLU(inplace=inplace),  # "3"
        nn.Conv2d(8, 6, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, classes),
    ).eval()


def capture(
    model: nn.Module, layer: str, x: Tensor, score: Callable[[Tensor], Tensor]
) -> tuple[Tensor, Tensor]:
    """Reference activations ``A`` and gradients ``G = d sum(score)/dA`` ``[N, K, h, w]``, float64.

    Runs on a float64 deep copy with plain grad mode, the test's own forward hook and
    ``torch.autograd.grad`` (independent of the engine's hook mechanics).
    """
    ref = copy.deepcopy(model).double().eval()
    store: dict[str, Tensor] = {}

    def hook(_m: nn.Module, _i: object, out: Tensor) -> None:
        store["a"] = out

    handle = dict(ref.named_modules())[layer].register_forward_hook(hook)
    try:
        with torch.enable_grad():
            out = ref(x.double())
            (g,) = torch.autograd.grad(score(out).sum(), store["a"])
    finally:
        handle.remove()
    return store["a"].detach(), g


def reference_cam(method: str, a: Tensor, g: Tensor, relu: bool = True) -> Tensor:
    """The published formulas, float64, ``[N, K, h, w] -> [N, h, w]``."""
    if method == "gradcam":  # Selvaraju et al.: alpha_k = 1/Z sum_ij G_kij
        w = g.sum(dim=(2, 3)) / (g.shape[2] * g.shape[3])
        cam = (w[:, :, None, None] * a).sum(1)
    elif method == "gradcam++":  # Chattopadhay et al., eq. 19 with the ReLU of eq. 7
        s = a.sum(dim=(2, 3), keepdim=True)
        den = 2 * g**2 + s * g**3
        alpha = torch.where(den != 0, g**2 / torch.where(den != 0, den, 1.0), 0.0)
        w = (alpha * torch.relu(g)).sum(dim=(2, 3))
        cam = (w[:, :, None, None] * a).sum(1)
    elif method == "hirescam":
        cam = (g * a).sum(1)
    elif method == "xgradcam":  # Fu et al.: w_k = sum_ij A_kij G_kij / sum_ij A_kij
        w = (a * g).sum(dim=(2, 3)) / a.sum(dim=(2, 3))
        cam = (w[:, :, None, None] * a).sum(1)
    elif method == "layercam":
        cam = (torch.relu(g) * a).sum(1)
    else:  # pragma: no cover
        raise AssertionError(method)
    return cam.clamp_min(0) if relu else cam


def assert_maps_close(got: Tensor, want: Tensor, rtol: float = 1e-4) -> None:
    """``got`` (float32) close to ``want`` with a tolerance relative to the map's scale."""
    want = want.to(got.dtype)
    scale = float(want.abs().max()) or 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * scale)


def cls(c: int) -> Callable[[Tensor], Tensor]:
    return lambda out: out[:, c]


# ----------------------------------------------------------------------------- closed forms


def test_toy_example_raw_map() -> None:
    """Maps [[1,2],[0,1]], [[3,0],[1,2]] with alpha (1/2, 1) give [[3.5,1],[1,2.5]]."""
    head = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[4 * 0.5, 4 * 1.0]]))  # h*w*alpha: GAP grads are alpha
    model = nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head).eval()
    x = torch.tensor([[[[1.0, 2.0], [0.0, 1.0]], [[3.0, 0.0], [1.0, 2.0]]]])
    cam = GradCAM(model, target_layer="0")
    raw = cam(x, 0, upsample=False, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([[[3.5, 1.0], [1.0, 2.5]]]))
    norm = cam(x, 0, upsample=False)
    torch.testing.assert_close(norm, (raw - 1.0) / 2.5)


def test_gap_linear_head_equals_cam_over_hw() -> None:
    """GAP + linear head: Grad-CAM = CAM (class weights times features) / (h*w), every class."""
    torch.manual_seed(1)
    feats = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2))
    model = nn.Sequential(feats, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).eval()
    x = torch.randn(3, 3, 21, 17)
    cam = GradCAM(model, target_layer="0")
    with torch.no_grad():
        a = feats(x)
    h, w = a.shape[-2:]
    weight = model[3].weight
    for c in range(5):
        expected = torch.einsum("k,nkhw->nhw", weight[c], a).detach() / (h * w)
        assert_maps_close(cam(x, c, upsample=False, normalize=False, relu=False), expected, 1e-5)
        assert_maps_close(cam(x, c, upsample=False, normalize=False), expected.clamp_min(0), 1e-5)


def test_gradients_match_finite_differences() -> None:
    """G at the target layer (hence alpha and the maps) equals central differences in float64."""
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(4, 4, 3, padding=1, stride=2),  # "2": target, [1, 4, 4, 4]
        nn.Tanh(),
        nn.Conv2d(4, 3, 3, padding=1),
        nn.Tanh(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(3, 3),
    ).double()
    model.eval()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    target = 1
    delta: dict[str, Tensor] = {}

    def perturb(_m: nn.Module, _i: object, out: Tensor) -> Tensor:
        return out + delta["d"] if "d" in delta else out

    store: dict[str, Tensor] = {}
    handle = model[2].register_forward_hook(perturb)
    handle2 = model[2].register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
    with torch.no_grad():
        model(x)
        a = store["a"].clone()
        g_fd = torch.zeros_like(a)
        eps = 1e-6
        for idx in np.ndindex(*a.shape):
            d = torch.zeros_like(a)
            d[idx] = eps
            delta["d"] = d
            up = model(x)[0, target]
            delta["d"] = -d
            down = model(x)[0, target]
            g_fd[idx] = (up - down) / (2 * eps)
        delta.clear()
    handle.remove()
    handle2.remove()
    alpha_fd = g_fd.mean(dim=(2, 3))
    assert alpha_fd.abs().min() > 1e-4  # non-degenerate weights
    gradcam = GradCAM(model, "2")(x, target, upsample=False, normalize=False, relu=False)
    assert_maps_close(gradcam, torch.einsum("nk,nkhw->nhw", alpha_fd, a), 1e-5)
    hires = GradCAM(model, "2", method="hirescam")
    assert_maps_close(
        hires(x, target, upsample=False, normalize=False, relu=False), (g_fd * a).sum(1), 1e-5
    )


def test_class_discrimination_two_objects() -> None:
    """A red object on the left and a green one on the right: each class's map peaks on its own."""
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0, 10:20, 3:11] = 1.0  # red, left half
    x[0, 1, 14:24, 20:29] = 1.0  # green, right half
    pick = nn.Conv2d(3, 2, 1, bias=False)
    head = nn.Linear(2, 2)
    with torch.no_grad():
        pick.weight.zero_()
        pick.weight[0, 0] = 1.0
        pick.weight[1, 1] = 1.0
        head.weight.copy_(torch.eye(2))
        head.bias.zero_()
    model = nn.Sequential(
        pick, nn.ReLU(), nn.AvgPool2d(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head
    ).eval()
    cam = GradCAM(model, target_layer="2")
    maps = cam(x, torch.tensor([0]))
    maps1 = cam(x, 1)
    for m, (rows, cols) in (
        (maps[0], (slice(10, 20), slice(3, 11))),
        (maps1[0], (slice(14, 24), slice(20, 29))),
    ):
        assert m.max() == 1.0
        r, c = divmod(int(m.argmax()), 32)
        assert rows.start - 2 <= r < rows.stop + 2 and cols.start - 2 <= c < cols.stop + 2
    assert maps[0, :, 16:].sum() < 0.02 * maps[0].sum()  # class 0: nothing on the right
    assert maps1[0, :, :16].sum() < 0.02 * maps1[0].sum()  # class 1: nothing on the left


# ----------------------------------------------------------------------------- methods


@pytest.mark.parametrize("method", METHODS)
def test_methods_match_reference_formulas(method: str) -> None:
    """Raw maps (ReLU'd, signed, counterfactual) equal the float64 formulas on captured A, G."""
    model = tiny_cnn(seed=3)
    x = torch.randn(3, 3, 16, 20)
    targets = torch.tensor([0, 3, 1])
    a, g = capture(model, "2", x, lambda out: out.gather(1, targets[:, None])[:, 0])
    cam = GradCAM(model, "2", method=method)
    res = cam.explain(x, targets, upsample=False, normalize=False)
    assert isinstance(res, CAMResult)
    assert res.maps.dtype == torch.float32 and res.maps.shape == (3, 8, 10)
    assert torch.equal(res.targets, targets)
    torch.testing.assert_close(res.scores, res.output.gather(1, targets[:, None])[:, 0])
    assert_maps_close(res.maps, reference_cam(method, a, g))
    signed = cam(x, targets, upsample=False, normalize=False, relu=False)
    ref_signed = reference_cam(method, a, g, relu=False)
    assert method == "layercam" or (ref_signed < 0).any()  # covers negative evidence
    assert_maps_close(signed, ref_signed)
    against = cam(x, targets, upsample=False, normalize=False, counterfactual=True)
    assert_maps_close(against, reference_cam(method, a, -g))
    full = cam(x, targets)
    up = F.interpolate(reference_cam(method, a, g)[:, None].float(), size=(16, 20), mode="bilinear")
    assert_maps_close(full, normalize_maps(up[:, 0]), 1e-3)
    assert full.shape == (3, 16, 20) and full.min() >= 0 and full.max() <= 1


def _pgc_classes() -> dict[str, type]:
    pgc = pytest.importorskip("pytorch_grad_cam")
    return {
        "gradcam": pgc.GradCAM,
        "gradcam++": pgc.GradCAMPlusPlus,
        "hirescam": pgc.HiResCAM,
        "xgradcam": pgc.XGradCAM,
        "layercam": pgc.LayerCAM,
    }


def _sum_head_cnn(seed: int = 4, stride: int = 2) -> nn.Module:
    """Target ``"3"`` is a (non-inplace) ReLU: positive activation sums, as x/gradcam++ assume.

    A spatial-sum head keeps gradients of order one, so pytorch_grad_cam's epsilons are
    negligible.
    """
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, stride=stride),
        nn.ReLU(),  # "3": target
        nn.Conv2d(8, 6, 3, padding=1),
        nn.Tanh(),
        SpatialSum(),
        nn.Linear(6, 3),
    ).eval()
    with torch.no_grad():
        model[-1].weight.mul_(10.0)  # |G| ~ 1: pytorch_grad_cam's gradcam++ eps (1e-6) negligible
    return model


@pytest.mark.parametrize("method", METHODS)
def test_methods_match_pytorch_grad_cam(method: str) -> None:
    """Raw maps equal pytorch_grad_cam's un-normalised per-layer maps; with a stride-1 layer the
    normalised maps match too (their resize to the input size is then the identity)."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.randn(2, 3, 12, 12)
    targets = [2, 0]
    for stride in (2, 1):
        model = _sum_head_cnn(stride=stride)
        ours = GradCAM(model, "3", method=method)
        theirs_model = copy.deepcopy(model)  # their .backward() fills parameter grads
        theirs = _pgc_classes()[method](model=theirs_model, target_layers=[theirs_model[3]])
        try:
            pgc_targets = [ClassifierOutputTarget(t) for t in targets]
            their_maps = torch.from_numpy(theirs(input_tensor=x, targets=pgc_targets))
            store = theirs.activations_and_grads
            a, g = store.activations[0].numpy(), store.gradients[0].numpy()
            their_raw = theirs.get_cam_image(x, theirs_model[3], pgc_targets, a, g, False)
        finally:
            theirs.activations_and_grads.release()
        raw = ours(x, torch.tensor(targets), upsample=False, normalize=False)
        assert_maps_close(raw, torch.from_numpy(np.maximum(their_raw, 0)), 1e-4)
        if stride == 1:
            assert_maps_close(ours(x, targets), their_maps, 1e-4)


def test_inplace_relu_after_target_is_harmless() -> None:
    """ReLU(inplace=True) right after the target: same maps as inplace=False. pytorch_grad_cam
    captures the activation *after* the in-place ReLU and so gives different maps."""
    from pytorch_grad_cam import GradCAM as PGCGradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    inplace, plain = tiny_cnn(seed=5, inplace=True), tiny_cnn(seed=5, inplace=False)
    x = torch.randn(2, 3, 16, 16)
    a, g = capture(plain, "2", x, cls(1))
    for method in ("gradcam", "hirescam"):
        got = GradCAM(inplace, "2", method=method)(x, 1, upsample=False, normalize=False)
        want = GradCAM(plain, "2", method=method)(x, 1, upsample=False, normalize=False)
        torch.testing.assert_close(got, want)
        assert_maps_close(got, reference_cam(method, a, g))
    assert (a < 0).any()  # the in-place ReLU really changes the activation
    maps = {}
    for name, m in (("inplace", inplace), ("plain", plain)):
        mc = copy.deepcopy(m)
        with PGCGradCAM(model=mc, target_layers=[mc[2]]) as pgc:
            maps[name] = torch.from_numpy(pgc(x, targets=[ClassifierOutputTarget(1)] * 2))
    assert (maps["inplace"] - maps["plain"]).abs().max() > 0.1
    ours = GradCAM(inplace, "2")(x, 1)
    assert_maps_close(ours, GradCAM(plain, "2")(x, 1), 1e-5)


def test_signed_and_counterfactual_maps() -> None:
    """relu=False keeps negative evidence; counterfactual = the map from negated weights."""
    model = tiny_cnn(seed=6)
    x = torch.randn(2, 3, 16, 16)
    for method in ("gradcam", "hirescam"):  # linear in G: counterfactual = -signed
        cam = GradCAM(model, "2", method=method)
        kw = {"upsample": False, "normalize": False}
        signed = cam(x, 2, relu=False, **kw)
        assert (signed < 0).any() and (signed > 0).any()
        torch.testing.assert_close(cam(x, 2, **kw), signed.clamp_min(0))
        torch.testing.assert_close(cam(x, 2, relu=False, counterfactual=True, **kw), -signed)
        torch.testing.assert_close(cam(x, 2, counterfactual=True, **kw), (-signed).clamp_min(0))
        both = cam(x, 2, upsample=False) + cam(x, 2, upsample=False, counterfactual=True)
        assert (both > 0).any()  # the two maps split the evidence by sign


def test_counterfactual_two_class_linear_head() -> None:
    """2-class GAP-linear head: for-class-1 = against-class-0 when w1 = -w0; generally the map
    of the logit difference y1 - y0 is map(1) + counterfactual map(0) (signed)."""
    torch.manual_seed(7)
    model = nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)
    ).eval()
    x = torch.randn(2, 3, 17, 17)
    kw = {"upsample": False, "normalize": False, "relu": False}
    cam = GradCAM(model, "0")
    diff = cam(x, lambda out: out[:, 1] - out[:, 0], **kw)
    assert_maps_close(diff, cam(x, 1, **kw) + cam(x, 0, counterfactual=True, **kw), 1e-5)
    with torch.no_grad():
        model[3].weight[1] = -model[3].weight[0]
    torch.testing.assert_close(cam(x, 0, counterfactual=True), cam(x, 1))
    assert not torch.allclose(cam(x, 0), cam(x, 1))


def test_several_target_layers_average_upsampled_maps() -> None:
    """Several layers: mean of the single-layer upsampled raw maps, normalised after averaging."""
    model = tiny_cnn(seed=8)
    x = torch.randn(2, 3, 16, 16)
    layers = ["0", "2", "4"]
    for method in ("gradcam", "layercam"):
        multi = GradCAM(model, layers, method=method)
        singles = [GradCAM(model, n, method=method)(x, 1, normalize=False) for n in layers]
        mean = torch.stack(singles).mean(0)
        assert_maps_close(multi(x, 1, normalize=False), mean, 1e-5)
        assert_maps_close(multi(x, 1), normalize_maps(mean), 1e-4)
        assert multi.target_layers == layers


# ----------------------------------------------------------------------------- targets


class DictOut(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(seed=9)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        y = self.net(x)
        return {"logits": y, "aux": y.detach() * 0}


Out = namedtuple("Out", ["logits", "box"])


class TupleOut(DictOut):
    def forward(self, x: Tensor) -> Out:  # type: ignore[override]
        y = self.net(x)
        return Out(y, y[:, :2])


def test_targets_none_int_list_tensor() -> None:
    model = tiny_cnn(seed=10)
    x = torch.randn(3, 3, 16, 16)
    cam = GradCAM(model, "2")
    with torch.no_grad():
        pred = model(x).argmax(1)
    res = cam.explain(x)
    assert torch.equal(res.targets, pred)
    torch.testing.assert_close(res.maps, cam(x, pred))
    per_image = [3, 0, 2]
    maps = cam(x, per_image)
    torch.testing.assert_close(maps, cam(x, torch.tensor(per_image)))
    for i, c in enumerate(per_image):
        torch.testing.assert_close(maps[i : i + 1], cam(x[i : i + 1], c))
    all3 = cam.explain(x, 3)
    assert all3.targets.tolist() == [3, 3, 3]
    a, g = capture(model, "2", x, cls(3))
    assert_maps_close(cam(x, 3, upsample=False, normalize=False), reference_cam("gradcam", a, g))


def test_callable_targets_dict_tuple_multilabel_regression() -> None:
    x = torch.randn(2, 3, 16, 16)
    plain = GradCAM(tiny_cnn(seed=9), "2")
    expected = plain(x, 2)
    dmodel = DictOut()
    res = GradCAM(dmodel, "net.2").explain(x, lambda out: out["logits"][:, 2])
    assert res.targets is None and set(res.output) == {"logits", "aux"}
    torch.testing.assert_close(res.maps, expected)
    tmodel = TupleOut()
    res = GradCAM(tmodel, "net.2").explain(x, lambda out: out[0][:, 2])
    torch.testing.assert_close(res.maps, expected)
    assert isinstance(res.output, Out) and not res.output.logits.requires_grad
    # multi-label: a sigmoid score; regression: a scalar output per image
    model = tiny_cnn(seed=9)
    a, g = capture(model, "2", x, lambda out: torch.sigmoid(out[:, 1]))
    got = GradCAM(model, "2")(
        x, lambda out: torch.sigmoid(out[:, 1]), upsample=False, normalize=False
    )
    assert_maps_close(got, reference_cam("gradcam", a, g))
    reg = nn.Sequential(tiny_cnn(seed=9, classes=1), nn.Flatten(0))  # output [N]
    a, g = capture(reg, "0.2", x, lambda out: out)
    got = GradCAM(reg, "0.2", method="hirescam")(
        x, lambda out: out, upsample=False, normalize=False
    )
    assert_maps_close(got, reference_cam("hirescam", a, g))


def test_bad_targets_raise() -> None:
    cam = GradCAM(tiny_cnn(seed=11), "2")
    x = torch.randn(3, 3, 16, 16)
    for bad in ([1, 2], [1, 2, 3, 0], torch.tensor([1, 2]), torch.zeros(4, dtype=torch.long)):
        with pytest.raises(ValueError, match="one class per image"):
            cam(x, bad)
    for bad in (4, -1, [0, 4, 1], torch.tensor([0, 1, -1])):
        with pytest.raises(ValueError, match=r"\[0, 4\)"):
            cam(x, bad)
    with pytest.raises(ValueError, match="integers"):
        cam(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        cam(x, lambda out: out)
    with pytest.raises(ValueError, match="callable"):
        GradCAM(DictOut(), "net.2")(x)
    with pytest.raises(ValueError, match="Unknown method"):
        GradCAM(tiny_cnn(), "2", method="gradcam+")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        cam(x[0])


# ----------------------------------------------------------------------------- robustness


def test_frozen_backbone_same_maps() -> None:
    model, frozen = tiny_cnn(seed=12), tiny_cnn(seed=12)
    for p in list(frozen[0].parameters()) + list(frozen[2].parameters()):
        p.requires_grad_(False)
    x = torch.randn(2, 3, 16, 16)
    for method in METHODS:
        torch.testing.assert_close(
            GradCAM(frozen, "2", method=method)(x, 1), GradCAM(model, "2", method=method)(x, 1)
        )
    for p in frozen.parameters():  # everything frozen, even above the target
        p.requires_grad_(False)
    torch.testing.assert_close(GradCAM(frozen, "2")(x, 1), GradCAM(model, "2")(x, 1))


def test_no_grad_and_inference_mode_callers() -> None:
    model = tiny_cnn(seed=13)
    x = torch.randn(2, 3, 16, 16)
    cam = GradCAM(model, "2", method="gradcam++")
    want = cam(x, 2)
    with torch.no_grad():
        got = cam(x, 2)
        assert not torch.is_grad_enabled()
    torch.testing.assert_close(got, want)
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor
        res = cam.explain(xi, 2)
        assert torch.is_inference_mode_enabled()
    torch.testing.assert_close(res.maps, want)
    assert not res.maps.is_inference() and not res.scores.is_inference()
    assert (res.maps * 2).sum() > 0  # usable outside inference mode
    fresh = GradCAM(model, "2")  # first call (layer measurement) inside inference mode
    with torch.inference_mode():
        got = fresh(x.clone(), 2)
    torch.testing.assert_close(got, GradCAM(model, "2")(x, 2))


def _bn_dropout_model(seed: int = 14) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),  # "3": target
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Dropout2d(0.5),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(8, 3),
    )
    with torch.no_grad():  # non-trivial running statistics
        for bn in (model[1], model[4]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
    return model


def test_train_mode_model_maps_equal_eval_and_state_restored() -> None:
    model = _bn_dropout_model()
    model.train()
    model[4].eval()  # a submodule deliberately left in eval mode
    modes = {n: m.training for n, m in model.named_modules()}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    x = torch.randn(2, 3, 16, 16)
    ref = copy.deepcopy(model).eval()
    rng = torch.get_rng_state()
    maps = GradCAM(model, "3")(x, 1)
    assert torch.equal(torch.get_rng_state(), rng)
    assert {n: m.training for n, m in model.named_modules()} == modes
    for n, b in model.named_buffers():
        assert torch.equal(b, buffers[n]), n
    torch.testing.assert_close(maps, GradCAM(ref, "3")(x, 1))
    a, g = capture(ref, "3", x, cls(1))
    assert_maps_close(
        GradCAM(model, "3")(x, 1, upsample=False, normalize=False), reference_cam("gradcam", a, g)
    )


def test_autocast_bf16_maps_are_float32_and_close() -> None:
    model = tiny_cnn(seed=15)
    x = torch.randn(2, 3, 16, 16)
    for method in METHODS:
        cam = GradCAM(model, "2", method=method)
        want = cam(x, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = cam(x, 1)
            raw = cam(x, 1, upsample=False, normalize=False)
        assert got.dtype == torch.float32 and raw.dtype == torch.float32
        assert (got - want).abs().max() < 0.1, method
        assert (got - want).abs().mean() < 0.02, method


def test_autocast_fp16_cpu() -> None:
    model = tiny_cnn(seed=15)
    x = torch.randn(2, 3, 16, 16)
    try:
        with torch.autocast("cpu", dtype=torch.float16):
            probe = model(x)
        supported = probe.dtype == torch.float16
    except (RuntimeError, NotImplementedError) as err:  # pragma: no cover - depends on build
        pytest.skip(f"fp16 autocast not supported on this CPU build: {err}")
    if not supported:  # pragma: no cover
        pytest.skip("fp16 autocast on CPU leaves convolutions in float32 here")
    cam = GradCAM(model, "2")
    with torch.autocast("cpu", dtype=torch.float16):
        got = cam(x, 1)
    assert got.dtype == torch.float32
    assert (got - cam(x, 1)).abs().max() < 0.02


def test_torch_compile_module_is_unwrapped() -> None:
    model = tiny_cnn(seed=16)
    compiled = torch.compile(model, backend="eager")
    cam = GradCAM(compiled, "_orig_mod.2")
    assert cam.model is model and cam.target_layers == ["2"]
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(cam(x, 1), GradCAM(model, "2")(x, 1))
    auto = GradCAM(compiled)
    auto(x)
    assert auto.target_layers == ["5"]  # the last spatial module, the Tanh


def test_input_layouts_and_shapes() -> None:
    model = tiny_cnn(seed=17)
    x = torch.randn(2, 3, 16, 24)
    cam = GradCAM(model, "2", method="layercam")
    want = cam(x, 1)
    assert want.shape == (2, 16, 24)
    cl_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    got = GradCAM(cl_model, "2", method="layercam")(x.to(memory_format=torch.channels_last), 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    one = cam(x[1:], 1)  # N = 1
    assert one.shape == (1, 16, 24)
    torch.testing.assert_close(one, want[1:], rtol=1e-4, atol=1e-5)
    assert cam(x, 1, upsample=False).shape == (2, 8, 12)
    gray = tiny_cnn(seed=17, in_ch=1)
    xg = torch.randn(2, 1, 20, 12)
    a, g = capture(gray, "2", xg, cls(0))
    got = GradCAM(gray, "2")(xg, 0, normalize=False)
    up = F.interpolate(
        reference_cam("gradcam", a, g)[:, None].float(), size=(20, 12), mode="bilinear"
    )
    assert got.shape == (2, 20, 12)
    assert_maps_close(got, up[:, 0])


def test_shared_module_as_target_is_rejected() -> None:
    relu = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(3, 4, 3), relu, nn.Conv2d(4, 4, 3), relu, SpatialSum())
    with pytest.raises(ValueError, match="exactly once"):
        GradCAM(model, "1")(torch.randn(1, 3, 12, 12), 0)


# ----------------------------------------------------------------------------- side effects


def test_leaves_model_grads_params_and_rng_untouched() -> None:
    model = _bn_dropout_model(seed=18)
    model.train()  # dropout active in train mode: must still not draw
    x = torch.randn(2, 3, 16, 16)
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    model[0].weight.grad = torch.randn_like(model[0].weight)
    model[10].weight.grad = torch.randn_like(model[10].weight)
    old = {0: model[0].weight.grad.clone(), 10: model[10].weight.grad.clone()}
    torch_rng, py_rng, np_rng = torch.get_rng_state(), random.getstate(), np.random.get_state()
    for method in METHODS:
        GradCAM(model, ["3", "0"], method=method)(x)
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert random.getstate() == py_rng
    assert np.array_equal(np.random.get_state()[1], np_rng[1])
    for n, p in model.named_parameters():
        assert torch.equal(p, params[n]), n
        if n in ("0.weight", "10.weight"):
            assert torch.equal(p.grad, old[int(n[:-7])]), n
        else:
            assert p.grad is None, n
    assert torch.is_grad_enabled()
    assert all(not m._forward_hooks for m in model.modules())


class Boom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = tiny_cnn(seed=19)
        self.armed = False

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        if self.armed:
            raise RuntimeError("boom")
        return y


def test_hooks_removed_and_state_restored_when_forward_raises() -> None:
    model = Boom()
    model.train()
    cam = GradCAM(model, "net.2")
    x = torch.randn(1, 3, 16, 16)
    cam(x)  # resolved
    model.armed = True
    for grad_mode in (True, False):
        with torch.set_grad_enabled(grad_mode):
            with pytest.raises(RuntimeError, match="boom"):
                cam(x, 1)
            assert torch.is_grad_enabled() == grad_mode
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert all(m.training for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    fresh = GradCAM(Boom(), "net.2")
    fresh.model.armed = True
    with pytest.raises(RuntimeError, match="boom"):  # raises during the layer measurement
        fresh(x)
    assert all(not m._forward_hooks for m in fresh.model.modules())


def test_graph_below_target_is_not_kept() -> None:
    """Tensors saved for backward during a call: far fewer bytes than a plain forward + grad."""
    torch.manual_seed(20)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1, stride=4),  # "4": target, 16x16
        nn.ReLU(),
        nn.Conv2d(16, 8, 3, padding=1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()
    x = torch.randn(2, 3, 64, 64)
    cam = GradCAM(model, "4")
    cam.resolve(x)

    def saved_bytes(fn: Callable[[], object]) -> int:
        total = [0]

        def pack(t: Tensor) -> Tensor:
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            fn()
        return total[0]

    def plain() -> None:
        store: dict[str, Tensor] = {}
        h = model[4].register_forward_hook(lambda _m, _i, o: store.__setitem__("a", o))
        out = model(x)
        torch.autograd.grad(out[:, 1].sum(), store["a"])
        h.remove()

    ours = saved_bytes(lambda: cam(x, 1))
    reference = saved_bytes(plain)
    below = sum(2 * 16 * 64 * 64 * 4 for _ in range(2))  # two full-resolution conv inputs
    assert reference > below
    assert 0 < ours < 0.1 * reference


# ----------------------------------------------------------------------------- normalisation


def test_normalize_maps() -> None:
    maps = torch.stack([torch.arange(12.0).view(3, 4), torch.zeros(3, 4), torch.full((3, 4), 5.0)])
    out = normalize_maps(maps)
    torch.testing.assert_close(out[0], torch.arange(12.0).view(3, 4) / 11)
    assert torch.equal(out[1], torch.zeros(3, 4)) and torch.equal(out[2], torch.zeros(3, 4))
    # scale-invariant: tiny raw maps (small gradients) are not flattened to zero
    torch.testing.assert_close(normalize_maps(maps * 1e-9), out)
    torch.testing.assert_close(normalize_maps(maps * 1e6), out)
    model = tiny_cnn(seed=21)
    x = torch.randn(2, 3, 16, 16)
    cam = GradCAM(model, "2")
    torch.testing.assert_close(cam(x, lambda out: out[:, 1] * 1e-10), cam(x, 1))


def test_guided_method_is_guided_backprop_times_the_map():
    from gradcam_callback.guided import guided_backprop

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1),
        torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(4, 6, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(6, 3),
    ).eval()
    x = torch.randn(3, 3, 10, 12)
    cam = GradCAM(model, "2")
    out = cam.guided(x, [0, 1, 2])
    expected = guided_backprop(model, x, [0, 1, 2]) * cam(x, [0, 1, 2])[:, None]
    assert out.shape == (3, 3, 10, 12) and out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    assert out.abs().sum() > 0


def test_output_detached_from_the_layer_is_a_clear_error():
    class LinearProbe(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = torch.nn.Conv2d(3, 4, 3)
            self.head = torch.nn.Linear(4, 2)

        def forward(self, x):
            with torch.no_grad():
                f = self.backbone(x)
            return self.head(f.mean((2, 3)))

    model = LinearProbe()
    with pytest.raises(RuntimeError, match="do not depend on the target layer"):
        GradCAM(model, "backbone")(torch.randn(2, 3, 8, 8))
    assert not model.backbone._forward_hooks
