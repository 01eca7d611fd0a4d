"""Model bundles: ``models/<name>/<version>/`` with ``model.json``, a card and weights.

Loading checks that the files exist and that the weights match the sha256 recorded
in ``model.json``; anything else is a :class:`BundleError` that says which file and
what was expected. Every finding records the bundle's name, version and checksum.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qcd.errors import InferenceError
from qcd.hashing import sha256_file

SHIPPED_MODELS = Path(__file__).resolve().parents[1] / "models"
"""The bundles that come with qcd (the repository's ``models/`` folder)."""

REQUIRED_KEYS = ("name", "version", "weights", "sha256", "labels", "input", "preprocessing")


class BundleError(InferenceError):
    """A model bundle is missing, incomplete or does not match its checksum."""


@dataclass(frozen=True)
class Bundle:
    """A verified model bundle."""

    name: str
    version: str
    path: Path
    spec: dict[str, Any]
    """The parsed ``model.json``."""
    sha256: str

    @property
    def weights_path(self) -> Path:
        return self.path / str(self.spec["weights"])


def models_root(configured: str) -> Path:
    """The configured bundle folder, or the shipped one when none is configured."""
    return Path(configured) if configured else SHIPPED_MODELS


def _version_key(version: str) -> tuple[int | str, ...]:
    return tuple(int(p) if p.isdigit() else p for p in version.split("."))


def load_bundle(root: str | Path, name: str, version: str | None = None) -> Bundle:
    """Find, parse and verify a bundle; the newest version when ``version`` is None.

    Raises
    ------
    BundleError
        No such bundle, ``model.json`` unreadable or incomplete, model card or
        weights missing, or a sha256 mismatch.
    """
    base = Path(root) / name
    if version is None:
        versions = sorted((p.parent.name for p in base.glob("*/model.json")), key=_version_key)
        if not versions:
            raise BundleError(f"no model bundle '{name}' under {Path(root).resolve()}")
        version = versions[-1]
    path = base / version
    spec_file = path / "model.json"
    try:
        spec = json.loads(spec_file.read_text())
    except FileNotFoundError:
        raise BundleError(f"model bundle {name}/{version}: {spec_file} is missing") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise BundleError(f"model bundle {name}/{version}: cannot read model.json: {exc}") from exc
    missing = [k for k in REQUIRED_KEYS if k not in spec]
    if missing:
        raise BundleError(f"model bundle {name}/{version}: model.json lacks {', '.join(missing)}")
    if not (path / "MODEL_CARD.md").is_file():
        raise BundleError(f"model bundle {name}/{version}: MODEL_CARD.md is missing")
    bundle = Bundle(name, version, path, spec, str(spec["sha256"]))
    if not bundle.weights_path.is_file():
        raise BundleError(f"model bundle {name}/{version}: weights {bundle.weights_path} missing")
    actual = sha256_file(bundle.weights_path)
    if actual != bundle.sha256:
        raise BundleError(
            f"model bundle {name}/{version}: weights sha256 {actual[:12]}... does not match "
            f"model.json ({bundle.sha256[:12]}...); the file is corrupt or was replaced"
        )
    return bundle

