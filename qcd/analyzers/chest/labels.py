"""The 16 labels of the chest model: the 14 ChestX-ray14 findings, COVID-19 and tuberculosis.

Order matters: it is the order of the model's outputs and of ``model.json``'s
``labels``. Names follow the NIH ``Data_Entry_2017.csv`` spelling with spaces
(``Pleural thickening``); :data:`NIH_NAMES` maps the CSV spelling back.
"""

from __future__ import annotations

import re

LABELS: tuple[str, ...] = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion", "Emphysema",
    "Fibrosis", "Hernia", "Infiltration", "Mass", "Nodule", "Pleural thickening",
    "Pneumonia", "Pneumothorax", "COVID-19", "Tuberculosis",
)

URGENT: tuple[str, ...] = ("Pneumothorax",)
"""Labels that raise the operator alert (finding ``urgent``) when they fire by default.

A pneumothorax can become a tension pneumothorax within minutes and is the classic
"call the ward now" radiograph finding; the others are reported but wait for the
normal reading queue. A bundle may override this with a ``urgent`` list.
"""

NIH_PREVALENCE: dict[str, float] = {
    "Atelectasis": 0.1031, "Cardiomegaly": 0.0248, "Consolidation": 0.0416, "Edema": 0.0205,
    "Effusion": 0.1188, "Emphysema": 0.0224, "Fibrosis": 0.0150, "Hernia": 0.0020,
    "Infiltration": 0.1774, "Mass": 0.0516, "Nodule": 0.0565, "Pleural thickening": 0.0302,
    "Pneumonia": 0.0128, "Pneumothorax": 0.0473,
    # Not in ChestX-ray14: an assumption (the NIH set has no COVID-19 or TB labels).
    "COVID-19": 0.02, "Tuberculosis": 0.02,
}
"""Marginal label frequencies of the 112,120 NIH images (``Data_Entry_2017_v2020.csv``)."""

NIH_NAMES: dict[str, str] = {"Pleural_Thickening": "Pleural thickening"}
"""NIH CSV spelling -> our label, where they differ."""


def slug(label: str) -> str:
    """Finding-name form of a label: ``Pleural thickening`` -> ``pleural_thickening``."""
    return re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_")


def finding_name(label: str) -> str:
    """The finding that carries a label's probability, e.g. ``chest_pneumothorax``."""
    return f"chest_{slug(label)}"


def canonical(name: str) -> str | None:
    """Our label for a spelling found in real label tables, or None when it is not one of ours."""
    name = NIH_NAMES.get(name.strip(), name.strip())
    key = slug(name)
    aliases = {"pleural_effusion": "effusion", "covid": "covid_19", "covid19": "covid_19",
               "tb": "tuberculosis", "pleural_thickening": "pleural_thickening"}
    key = aliases.get(key, key)
    for label in LABELS:
        if slug(label) == key:
            return label
    return None
