"""Loading a bundle's weights into an analyzer's network, the one way all analyzers do it."""

from __future__ import annotations

from collections.abc import Collection
from typing import TypeVar

import torch

from qcd.bundles import Bundle, BundleError

M = TypeVar("M", bound=torch.nn.Module)


def load_weights(bundle: Bundle, model: M, preprocessing: str | Collection[str]) -> M:
    """``model`` with the bundle's (checksum-verified) state dict, in eval mode.

    ``preprocessing`` is the version this qcd runs, or the versions it can run (an
    analyzer that follows the bundle's choice).

    Raises
    ------
    BundleError
        The bundle was trained with a preprocessing version this qcd does not run.
    """
    known = {preprocessing} if isinstance(preprocessing, str) else set(preprocessing)
    if bundle.spec.get("preprocessing") not in known:
        raise BundleError(f"bundle {bundle.name}/{bundle.version} was trained with "
                          f"preprocessing {bundle.spec.get('preprocessing')!r}; this qcd "
                          f"has {', '.join(sorted(known))}")
    state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
