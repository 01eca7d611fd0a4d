"""training.earl.retune: a physics-estimate bundle's threshold tuned against precise labels."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qcd.analyzers.earl.decision import Thresholds
from qcd.analyzers.earl.phantom import ReconParams
from qcd.bundles import SHIPPED_MODELS, Bundle, load_bundle
from training.earl import retune as rt
from training.earl.analyze import bundle_tasks
from training.earl.card import model_card
from training.earl.train import case_metrics

SOURCE = SHIPPED_MODELS / "earl" / "2.1.0"


def _held_out_report(path: Path, source: Bundle) -> list[dict[str, Any]]:
    """A report of ``source``'s held-out cases (their seeds and labels, made-up P)."""
    rng = np.random.default_rng(0)
    cases = [{"seed": t.seed, "label": t.label,
              "p_earl": float(rng.uniform(0.0, 0.4) if t.label == "clinical"
                              else rng.uniform(0.2, 1.0)),
              "p_earl2": 1.0 if t.label == "EARL2" else 0.0}
             for t in bundle_tasks(source.spec)]
    path.write_text(json.dumps({"bundle": {"sha256": source.sha256}, "split": "test",
                                "cases": cases}))
    return cases


def test_threshold_table_and_ties_go_to_the_highest() -> None:
    rows = [{"p_earl": 0.2, "label": "clinical", "precise_label": "clinical"},
            {"p_earl": 0.3, "label": "EARL1", "precise_label": "clinical"},  # a lucky pass
            {"p_earl": 0.5, "label": "EARL2", "precise_label": "EARL2"}]
    precise = rt.label_table(rows, "precise_label")
    assert precise["0.10"] == pytest.approx(1 / 3) and precise["0.25"] == pytest.approx(2 / 3)
    assert precise["0.35"] == precise["0.50"] == 1.0
    assert rt.best_threshold(precise) == 0.5
    stored = rt.label_table(rows, "label")
    assert rt.best_threshold(stored) == 0.3  # the stored labels reward the lower threshold


def test_precise_label_is_seeded_and_measures_64_times(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[int, int, int]] = []

    def fake(params: Any, rng: np.random.Generator, positions: int, noise_draws: int
             ) -> tuple[str, None]:
        seen.append((positions, noise_draws, int(rng.integers(1 << 30))))
        return "EARL1", None

    monkeypatch.setattr(rt, "label_params", fake)
    params = ReconParams((3.0, 3.0, 3.0), 8.0, 0.1, 0.05)
    assert rt.precise_label(params, 11) == rt.precise_label(params, 11) == "EARL1"
    rt.precise_label(params, 12)
    assert seen[0] == seen[1] != seen[2] and seen[0][:2] == (16, 4)


def test_retune_cli_writes_a_bundle_with_the_same_weights(tmp_path: Path) -> None:
    """Tuning rows from a cache and a held-out report: no simulation, about a second."""
    source = load_bundle(SHIPPED_MODELS, "earl", "2.1.0")
    report = tmp_path / "earl-2.1.0.json"
    cases = _held_out_report(report, source)
    assert len(cases) == source.spec["training"]["n_test_cases"]
    cache = tmp_path / "tune.json"
    rows = [{"seed": 1, "label": "clinical", "precise_label": "clinical", "p_earl": 0.2,
             "p_earl2": 1.0, "target": [4.0, 0.2, 0.1]},
            {"seed": 2, "label": "EARL1", "precise_label": "clinical", "p_earl": 0.3,
             "p_earl2": 0.0, "target": [8.0, 0.1, 0.05]},
            {"seed": 3, "label": "EARL2", "precise_label": "EARL2", "p_earl": 0.5,
             "p_earl2": 1.0, "target": [5.5, 0.3, 0.06]}]
    request = {"bundle": source.sha256, "n_per_class": 1, "seed": 5, "sampler": "sim-1",
               "precise": [16, 4]}
    cache.write_text(json.dumps({"request": request, "rows": rows, "seconds": 12.5}))
    out = tmp_path / "earl" / "9.9.9"
    assert rt.main(["--bundle", str(SOURCE), "--out", str(out), "--n-per-class", "1",
                    "--seed", "5", "--held-out-report", str(report),
                    "--cache", str(cache)]) == 0
    new = load_bundle(tmp_path, "earl", "9.9.9")  # checksum verified
    assert new.sha256 == source.sha256 and new.spec["architecture"] == "physest"
    assert new.spec["thresholds"] == {**source.spec["thresholds"], "stage1": 0.5}
    assert new.spec["threshold_tuning"]["precise_differs_from_stored"] == 1
    assert new.spec["retune"]["source"] == {"version": "2.1.0", "sha256": source.sha256}
    assert not set(rt.DROPPED) & set(new.spec)
    want = case_metrics([c["label"] for c in cases], [(c["p_earl"], c["p_earl2"]) for c in cases],
                        Thresholds.from_spec(new.spec))
    assert new.spec["metrics"]["held_out_simulated"] == want
    assert list(new.spec["comparison_same_cases"])[0] == "earl/9.9.9 (physest)"
    card = (out / "MODEL_CARD.md").read_text()
    assert card == model_card(new.spec) and "**Re-tuned**" in card
    assert "1 of 3 differ from the 16-measurement label" in card

    shuffled = {**json.loads(report.read_text()), "cases": cases[1:] + cases[:1]}
    report.write_text(json.dumps(shuffled))
    with pytest.raises(SystemExit):  # the right bundle, other cases (or another order)
        rt.main(["--bundle", str(SOURCE), "--out", str(out), "--seed", "5",
                 "--held-out-report", str(report)])
    report.write_text(json.dumps({**shuffled, "cases": cases}).replace(source.sha256, "0" * 64))
    with pytest.raises(SystemExit):  # a report of another bundle
        rt.main(["--bundle", str(SOURCE), "--out", str(out), "--seed", "5",
                 "--held-out-report", str(report)])
    with pytest.raises(SystemExit):  # the training seed: not fresh cases
        rt.main(["--bundle", str(SOURCE), "--out", str(out), "--seed",
                 str(source.spec["training"]["seed"]), "--held-out-report", str(report)])
