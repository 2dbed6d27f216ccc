"""Shared, session-scoped fixtures: trained planted-shortcut worlds.

Training a world costs a few seconds, so each distinct world is trained once per test session and
cached. Treat the returned models as read-only (no training, no ``requires_grad_`` changes, no
hooks left behind); ``copy.deepcopy(world.model)`` if a test must modify one. Tests that need a
callback *during* training call :func:`gradcam_callback.synthetic.train_world` themselves.

Fixtures:
    trained_world: factory ``trained_world(artifact="watermark", shortcut=True, **kwargs)`` ->
        :class:`~gradcam_callback.synthetic.TrainedWorld` (``model, dm = world`` unpacks it);
        ``kwargs`` go to ``train_world`` (``seed``, ``epochs``, ``num_classes``, ``n_train``, ...)
        and are part of the cache key, so keep to the defaults to share worlds with other tests.
    shortcut_world: ``trained_world("watermark", shortcut=True)``: val_acc ~1.0, relies on the
        top-left watermark (accuracy collapses when it is removed or swapped).
    clean_world: ``trained_world("watermark", shortcut=False)``: the watermark is drawn
        independently of the label; the model learned the object (shape).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from gradcam_callback.synthetic import TrainedWorld, train_world


@pytest.fixture(scope="session")
def trained_world() -> Callable[..., TrainedWorld]:
    """Factory of cached trained worlds (see the module docstring)."""
    cache: dict[tuple[Any, ...], TrainedWorld] = {}

    def get(artifact: str = "watermark", shortcut: bool = True, **kwargs: Any) -> TrainedWorld:
        if "callbacks" in kwargs:
            raise TypeError("cached worlds take no callbacks: call train_world() directly")
        key = (artifact, bool(shortcut), tuple(sorted(kwargs.items())))
        if key not in cache:
            cache[key] = train_world(artifact, shortcut=shortcut, **kwargs)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def shortcut_world(trained_world: Callable[..., TrainedWorld]) -> TrainedWorld:
    """Watermark world with a perfect shortcut (``correlation=1.0``)."""
    return trained_world("watermark", shortcut=True)


@pytest.fixture(scope="session")
def clean_world(trained_world: Callable[..., TrainedWorld]) -> TrainedWorld:
    """Watermark world without shortcut (variant independent of the label)."""
    return trained_world("watermark", shortcut=False)
