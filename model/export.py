"""Export the trained encoder alone, with its preprocessing and a model card.

The desktop loads only the exported encoder (never the training model), with
``keras.saving.load_model(path, safe_mode=True)``. Beside ``encoder.keras`` the exporter writes
``encoder.card.json``: the model card (architecture, parameter count, data, configuration,
final metrics, the preprocessing, i.e. the NormSpec and the pixel scaling, and the command that
reproduces the run). An encoder without its card is refused by :func:`load_encoder`, because a
query through other preprocessing than the training data's would be silently wrong.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

CARD_SUFFIX = ".card.json"


def card_path(model_path: str | Path) -> Path:
    """``encoder.keras`` -> ``encoder.card.json``."""
    p = Path(model_path)
    return p.with_name(p.stem + CARD_SUFFIX)


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file (the encoder's identity in embeddings and labels)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def export_encoder(
    encoder: Any,
    out_path: str | Path,
    *,
    normspec: dict | None,
    scaling: str | dict,
    config: dict | None = None,
    data: dict | None = None,
    metrics: dict | None = None,
    command: str | None = None,
    notes: str = "",
) -> Path:
    """Save ``encoder`` as ``.keras`` and write its model card; returns the ``.keras`` path.

    Parameters
    ----------
    encoder : model.encoder.Encoder
        The trained backbone (not the VICReg wrapper).
    out_path : path-like
        Ends in ``.keras``.
    normspec : dict or None
        The NormSpec of the training data (None for plain image folders).
    scaling : str or dict
        How pixels were scaled to the encoder's input (``model.data.DataInfo.scaling``).
    config, data, metrics : dict, optional
        Training configuration, data description, final metrics.
    command : str, optional
        The command line that reproduces the run.
    notes : str
        Free text for the card.
    """
    out_path = Path(out_path)
    if out_path.suffix != ".keras":
        raise ValueError(f"export path must end in .keras, got {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(out_path.stem + ".tmp.keras")
    encoder.save(tmp)
    tmp.replace(out_path)
    cfg = encoder.get_config()
    card = {
        "format": "ssald-encoder-card",
        "version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "encoder_file": out_path.name,
        "encoder_sha256": file_sha256(out_path),
        "architecture": {k: v for k, v in cfg.items() if k in (
            "bands", "input_size", "width", "depths", "bottleneck", "embedding_dim")},
        "parameters": int(encoder.count_params()),
        "input": {"shape": [cfg.get("input_size"), cfg.get("input_size"), cfg.get("bands")],
                  "scaling": scaling, "layout": "channels_last"},
        "normspec": normspec,
        "data": data or {},
        "training_config": config or {},
        "metrics": metrics or {},
        "command": command,
        "notes": notes,
        "method": "VICReg (Bardes, Ponce & LeCun 2022) self-supervised on unlabelled cutouts",
    }
    cp = card_path(out_path)
    cp.write_text(json.dumps(card, indent=2, default=float) + "\n")
    return out_path


def load_card(model_path: str | Path) -> dict:
    """Read the model card of an exported encoder."""
    cp = card_path(model_path)
    if not cp.exists():
        raise FileNotFoundError(
            f"{cp}: the model card is missing; an encoder without its preprocessing cannot be "
            "used safely"
        )
    card = json.loads(cp.read_text())
    if card.get("format") != "ssald-encoder-card":
        raise ValueError(f"{cp}: not an SSALD encoder card")
    return card


def load_encoder(model_path: str | Path) -> tuple[Any, dict]:
    """Load an exported encoder with ``safe_mode=True`` and its card."""
    import keras

    import model.encoder  # noqa: F401  (registers the Encoder class for deserialisation)

    model_path = Path(model_path)
    if not model_path.exists():
        raise FileNotFoundError(f"{model_path}: no such encoder file")
    card = load_card(model_path)
    encoder = keras.saving.load_model(model_path, safe_mode=True, compile=False)
    return encoder, card
