"""``on_flag``: "stop" ends training gracefully, "raise" raises ShortcutDetected with the flags."""

from __future__ import annotations

import pytest

from gradcam_callback import GradCAMCallback, ShortcutDetected
from gradcam_callback.synthetic import train_world


def _root(tmp_path):
    return {"default_root_dir": str(tmp_path)}  # the PNG fallback (no logger) writes there


@pytest.mark.slow
def test_on_flag_stop_ends_training_early(tmp_path):
    cb = GradCAMCallback(num_probes=16, on_flag="stop", verbose=False)
    train_world(
        "watermark", shortcut=True, epochs=8, callbacks=[cb], trainer_kwargs=_root(tmp_path)
    )
    fired = [f for f in cb.flags if f.kind in ("artifact", "background")]
    assert fired, [r["metrics"] for r in cb.history]
    last_epoch = cb.history[-1]["epoch"]
    assert last_epoch == fired[0].epoch < 7  # stopped at the epoch of the first alarm


@pytest.mark.slow
def test_on_flag_raise_carries_the_flags(tmp_path):
    cb = GradCAMCallback(num_probes=16, on_flag="raise", verbose=False)
    with pytest.raises(ShortcutDetected) as info:
        train_world(
            "watermark", shortcut=True, epochs=8, callbacks=[cb], trainer_kwargs=_root(tmp_path)
        )
    kinds = {f.kind for f in info.value.flags}
    assert kinds & {"artifact", "background"} and "drift" not in kinds
    assert "shortcut learning detected" in str(info.value)
