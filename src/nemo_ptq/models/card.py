"""Reading the model card (data/model/card.json) that fetch-pretrained writes next to model.nemo."""

from __future__ import annotations

import json
from pathlib import Path

from nemo_ptq.errors import DataError

CARD_FILE = "card.json"
CARD_KEYS = ("vocabulary", "blank_id", "tokenizer", "sample_rate", "feature_dim")


def read_card(model_dir: Path) -> dict:
    """data/model/card.json, checked for the keys prepare and evaluate need."""
    path = Path(model_dir) / CARD_FILE
    if not path.is_file():
        raise DataError(f"{path} is missing: run the fetch-pretrained stage first (dvc repro fetch-pretrained)")
    card = json.loads(path.read_text())
    missing = [key for key in CARD_KEYS if key not in card]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}: rerun dvc repro fetch-pretrained")
    return card
