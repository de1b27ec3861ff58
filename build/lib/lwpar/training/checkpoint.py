"""A training run's checkpoint (`checkpoint.pt` in its output folder): model, optimizer, schedule,
loss scale, moving average, RNG state, history and best epoch, written every epoch; and the
fingerprint of the settings it was made under, so that a run never resumes another's."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from lwpar.core.modelfile import load_torch, save_torch
from lwpar.core.runtime import rng_state, set_rng_state

CHECKPOINT = "checkpoint.pt"


def fingerprint(*parts) -> str:
    """A short hash of the settings a run depends on."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Checkpoint:
    def __init__(self, folder: Path, stamp: str = ""):
        self.path, self.stamp = Path(folder) / CHECKPOINT, stamp

    def restore(self, model, optimizer, scheduler, scaler, ema) -> dict | None:
        """Load the checkpoint into the objects and the RNGs; None without one. A checkpoint written
        under other settings is deleted, not resumed: resuming it would mix two runs."""
        if not self.path.exists():
            return None
        state = load_torch(self.path, "training checkpoint")
        if state.get("fingerprint", self.stamp) != self.stamp:
            self.path.unlink()
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        return state

    def save(self, epoch: int, model, optimizer, scheduler, scaler, ema, history: list[dict], best: dict) -> None:
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": rng_state(),
                    "epoch": epoch, "history": history, "best": best, "fingerprint": self.stamp,
                    **({"ema": ema.state_dict()} if ema is not None else {})}, self.path)
