"""Trainer callbacks: run metadata in TensorBoard at step 0, so every run explains itself."""

from __future__ import annotations

import json
from typing import Any

from transformers import TrainerCallback


class RunMetadataCallback(TrainerCallback):
    """Writes the token budget, parameter counts and text summaries of the run at step 0.

    TensorBoard's scalars answer "how much compute and how big"; its text tab answers "what exactly
    ran" (config, resolved attention, device, precision, datasets and mixture rates).
    """

    def __init__(self, writer, scalars: dict[str, float], texts: dict[str, Any]) -> None:
        self.writer = writer
        self.scalars = scalars
        self.texts = texts

    def on_train_begin(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for name, value in self.scalars.items():
            self.writer.add_scalar(f"run/{name}", value, 0)
        for name, value in self.texts.items():
            text = value if isinstance(value, str) else json.dumps(value, indent=2, sort_keys=True, default=str)
            # Markdown code block keeps JSON indentation readable in TensorBoard's text tab.
            self.writer.add_text(f"run/{name}", f"```\n{text}\n```", 0)
        self.writer.flush()
