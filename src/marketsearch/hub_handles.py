"""The TF-Hub handles a saved model may load in this process: only those the config names
(``text_model.hub_handle``, ``serving.hub_handles``), never one a saved file chooses by itself
(marketsearch.models.text_layers.HubTextEncoder.from_config checks here). No TensorFlow import:
every command and stage calls ``allow`` cheaply."""
from __future__ import annotations

ALLOWED: set[str] = set()


def allow(handles) -> None:
    """Let models loaded in this process use these TF-Hub handles."""
    ALLOWED.update(str(h) for h in handles if h)
