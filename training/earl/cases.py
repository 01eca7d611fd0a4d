"""Simulated EARL training cases: what is simulated, how it is preprocessed and split.

A :class:`Case` holds one reconstruction's net inputs (per preprocessing version) and its
physics label; a :class:`Variant` names what a model reads from it (architecture,
preprocessing version, voxel-size input, auxiliary targets). Shared by
``training.earl.train``, ``training.earl.analyze`` and ``training.earl.real``.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from qcd.analyzers.earl.model import EarlModel, aux_targets
from qcd.analyzers.earl.phantom import RecoveryCoefficients
from qcd.analyzers.earl.preprocess import (
    PREPROCESSING_VERSION,
    PREPROCESSINGS,
    prepare,
    voxel_channels,
)

LABELS = ("clinical", "EARL1", "EARL2")


@dataclass
class Case:
    s1: np.ndarray  # (10, 1, 300, 200) float16
    s2: np.ndarray
    label: str
    params: dict[str, Any]
    rc: RecoveryCoefficients | None = None
    """The phantom recoveries that gave ``label`` (simulated cases only)."""
    extra: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    """(s1, s2) of further preprocessing versions of the same reconstruction."""

    def slices(self, stage: int, variant: Variant) -> np.ndarray:
        """float32 net input of ``stage`` as ``variant`` reads it."""
        if variant.preprocessing == self.params.get("preprocessing", PREPROCESSING_VERSION):
            s = self.s1 if stage == 1 else self.s2
        else:
            if not self.extra or variant.preprocessing not in self.extra:
                raise ValueError(f"case was not preprocessed with {variant.preprocessing}")
            s = self.extra[variant.preprocessing][stage - 1]
        s = s.astype(np.float32)
        if variant.voxel_input:
            s = voxel_channels(s, tuple(self.params["voxel_mm"]))  # type: ignore[arg-type]
        return s


@dataclass(frozen=True)
class Variant:
    """One trainable configuration (see the module docstring for the names)."""

    name: str
    architecture: str = "edgenet"
    preprocessing: str = PREPROCESSING_VERSION
    voxel_input: bool = False
    aux: bool = False

    @classmethod
    def parse(cls, name: str) -> Variant:
        base, *flags = name.strip().split("+")
        unknown = set(flags) - {"vox", "aux"}
        if unknown:
            raise ValueError(f"variant {name!r}: unknown option(s) {sorted(unknown)}")
        if base in ("edgenet", "paper"):
            arch, pre = base, PREPROCESSING_VERSION
        elif base.startswith("pre") and f"earl-{base[:3]}-{base[3:]}" in PREPROCESSINGS:
            arch, pre = "edgenet", f"earl-pre-{base[3:]}"
        else:
            raise ValueError(f"variant {name!r}: base must be edgenet, paper or one of "
                             + ", ".join(v.replace("earl-pre-", "pre") for v in PREPROCESSINGS))
        if arch == "paper" and flags:
            raise ValueError(f"variant {name!r}: +vox and +aux are EdgeNet options")
        return cls(name.strip(), arch, pre, "vox" in flags, "aux" in flags)

    def model(self) -> EarlModel:
        return EarlModel(self.architecture, self.voxel_input, self.aux)

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Variant:
        """The variant a bundle's ``model.json`` describes."""
        options = spec.get("input") or {}
        arch = str(spec.get("architecture", "edgenet"))
        return cls(arch, arch, str(spec.get("preprocessing", PREPROCESSING_VERSION)),
                   bool(options.get("voxel_input")), bool(options.get("aux")))


def make_case(task: tuple[int, str], versions: tuple[str, ...] = (PREPROCESSING_VERSION,),
              sampler: str | None = None) -> Case:
    """Simulate one case and preprocess it with each of ``versions`` (the first is the
    case's own ``s1``/``s2``); ``sampler`` is a :data:`training.earl.simulate.SAMPLERS`
    version (default: the default one). Runs in a worker process."""
    from training.earl.simulate import DEFAULT_SAMPLER, simulate_case

    seed, label = task
    volume, params, got, rc = simulate_case(np.random.default_rng(seed), label,
                                            sampler or DEFAULT_SAMPLER)
    prepared = {}
    for version in versions:
        s1, _, s2, _ = prepare(volume, params.voxel_mm, version)
        prepared[version] = (s1.astype(np.float16), s2.astype(np.float16))
    meta = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(params).items()}
    meta["preprocessing"] = versions[0]
    first = prepared.pop(versions[0])
    return Case(first[0], first[1], got, meta, rc, prepared or None)


def case_tasks(n_per_class: int, seed: int) -> list[tuple[int, str]]:
    """The (seed, label) of every simulated case, in the order :func:`make_cases` makes them."""
    return [(seed * 100_003 + i * len(LABELS) + k, label)
            for i in range(n_per_class) for k, label in enumerate(LABELS)]


def make_cases(n_per_class: int, seed: int, workers: int,
               versions: tuple[str, ...] = (PREPROCESSING_VERSION,),
               sampler: str | None = None) -> list[Case]:
    tasks = [(t, versions, sampler) for t in case_tasks(n_per_class, seed)]
    if workers <= 1:
        return [make_case(*t) for t in tasks]
    with mp.get_context("spawn").Pool(workers) as pool:
        return pool.starmap(make_case, tasks, chunksize=2)


DEFAULT_VARIANT = Variant("edgenet")


def stage_inputs(cases: list[Case], stage: int, variant: Variant = DEFAULT_VARIANT
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Net inputs, class targets and (simulated cases, ``+aux``) auxiliary targets."""
    keep = cases if stage == 1 else [c for c in cases if c.label != "clinical"]
    xs = [c.slices(stage, variant) for c in keep]
    positive = (lambda c: c.label != "clinical") if stage == 1 else (
        lambda c: c.label == "EARL2")
    ys = [int(positive(c)) for c, x in zip(keep, xs) for _ in range(len(x))]
    aux = None
    if variant.aux:
        aux = torch.tensor([aux_targets(c.params["fwhm_mm"], c.params["overshoot"],
                                        c.params["cov"])
                            for c, x in zip(keep, xs) for _ in range(len(x))])
    return torch.from_numpy(np.concatenate(xs)), torch.tensor(ys), aux


def split(cases: list[Case], seed: int, test_fraction: float) -> tuple[list[Case], list[Case]]:
    train, test = split_indices([c.label for c in cases], seed, test_fraction)
    return [cases[i] for i in train], [cases[i] for i in test]


def nested_subset(cases: list[Case], fraction: float, seed: int) -> list[Case]:
    """A stratified share of ``cases`` for a learning curve.

    Each class is permuted once by ``seed``, and a share takes the first
    ``round(fraction * n)`` (at least one) of that order: with the same seed a smaller
    share is a subset of a larger one, so the points of a curve differ only by the cases
    added, not by a fresh draw.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    out: list[Case] = []
    for label in LABELS:
        group = [c for c in cases if c.label == label]
        order = rng.permutation(len(group))
        out += [group[i] for i in order[:max(1, int(round(fraction * len(group))))]]
    return out


def split_indices(labels: list[str], seed: int, test_fraction: float
                  ) -> tuple[list[int], list[int]]:
    """Positions of the training and held-out cases, stratified by label.

    Needs only the labels, so the held-out set can be rebuilt without simulating the
    training cases (``training.earl.analyze``).
    """
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in LABELS:
        group = [i for i, got in enumerate(labels) if got == label]
        order = rng.permutation(len(group))
        n_test = max(1, int(round(test_fraction * len(group))))
        test += [group[i] for i in order[:n_test]]
        train += [group[i] for i in order[n_test:]]
    return train, test
