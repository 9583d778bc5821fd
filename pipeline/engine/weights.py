"""A model's weights from a checkpoint of either engine, without building the engine (evaluation needs no
optimizer)."""

from __future__ import annotations

from pathlib import Path

import torch

from pipeline.checkpoint.store import load_state
from pipeline.engine.deepspeed_engine import DEEPSPEED_TAG


def load_weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model's state dict from a checkpoint of either engine (for evaluation: no optimizer needed)."""
    ours = load_state(checkpoint / "state.pt") if (checkpoint / "state.pt").exists() else {}
    if "model" in ours:  # DDPEngine.save
        return ours["model"]
    deepspeed_file = checkpoint / DEEPSPEED_TAG / "mp_rank_00_model_states.pt"
    if deepspeed_file.exists():  # DeepSpeedEngine.save: DeepSpeed's own layout
        return load_state(deepspeed_file)["module"]
    raise FileNotFoundError(f"{checkpoint}: no model weights (neither state.pt with 'model' nor {deepspeed_file.name})")
