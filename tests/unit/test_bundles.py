"""Model bundles: discovery, verification, clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcd.bundles import BundleError, load_bundle
from qcd.workers.queue import retry_delay
from tests.toy_analyzers import write_toy_bundle


def test_loads_newest_version_and_verifies(tmp_path: Path) -> None:
    write_toy_bundle(tmp_path, "1.2")
    write_toy_bundle(tmp_path, "1.10")
    bundle = load_bundle(tmp_path, "toy")
    assert bundle.version == "1.10"  # numeric, not lexical, order
    assert len(bundle.sha256) == 64 and bundle.weights_path.is_file()
    assert load_bundle(tmp_path, "toy", "1.2").version == "1.2"


def test_a_configured_pin_selects_the_version(tmp_path: Path) -> None:
    from qcd.config import ConfigError, load_settings
    from qcd.workers.run import BundleCache

    write_toy_bundle(tmp_path, "1.2")
    write_toy_bundle(tmp_path, "1.10")
    settings = load_settings(environ={"QCD_WORKERS__BUNDLE_VERSIONS": "toy=1.2"})
    assert dict(settings.workers.bundle_versions) == {"toy": "1.2"}
    assert BundleCache(tmp_path, settings.workers.bundle_versions).get("toy").version == "1.2"
    assert BundleCache(tmp_path).get("toy").version == "1.10"
    with pytest.raises(BundleError, match="toy/9.9"):
        BundleCache(tmp_path, {"toy": "9.9"}).get("toy")
    with pytest.raises(ConfigError, match="workers.bundle_versions.toy"):
        load_settings(environ={"QCD_WORKERS__BUNDLE_VERSIONS": "toy=../../etc"})


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    path = write_toy_bundle(tmp_path)
    (path / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(BundleError, match="does not match model.json"):
        load_bundle(tmp_path, "toy")


@pytest.mark.parametrize("remove", ["weights.bin", "MODEL_CARD.md", "model.json"])
def test_missing_files_are_named(tmp_path: Path, remove: str) -> None:
    path = write_toy_bundle(tmp_path)
    (path / remove).unlink()
    with pytest.raises(BundleError, match=remove.split(".")[0] if remove != "model.json"
                       else "no model bundle"):
        load_bundle(tmp_path, "toy")
    with pytest.raises(BundleError, match=remove.replace(".", r"\.")):
        load_bundle(tmp_path, "toy", "1.0")


def test_incomplete_model_json(tmp_path: Path) -> None:
    path = write_toy_bundle(tmp_path)
    spec = json.loads((path / "model.json").read_text())
    del spec["sha256"], spec["labels"]
    (path / "model.json").write_text(json.dumps(spec))
    with pytest.raises(BundleError, match="lacks sha256, labels"):
        load_bundle(tmp_path, "toy")


def test_unknown_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no model bundle 'earl'"):
        load_bundle(tmp_path, "earl")


def test_retry_delay_is_exponential() -> None:
    assert [retry_delay(30, n) for n in (1, 2, 3)] == [30, 60, 120]


def test_the_shipped_bundle_is_found_from_any_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from qcd.bundles import SHIPPED_MODELS, models_root

    monkeypatch.chdir(tmp_path)
    assert models_root("") == SHIPPED_MODELS
    assert models_root("site/models") == Path("site/models")
    assert load_bundle(models_root(""), "earl").name == "earl"
