"""Loading a bundle's weights into an analyzer's network, the one way all analyzers do it."""

from __future__ import annotations

from typing import TypeVar

import torch

from qcd.bundles import Bundle, BundleError

M = TypeVar("M", bound=torch.nn.Module)


def load_weights(bundle: Bundle, model: M, preprocessing: str) -> M:
    """``model`` with the bundle's (checksum-verified) state dict, in eval mode.

    Raises
    ------
    BundleError
        The bundle was trained with another preprocessing version than this qcd's.
    """
    if bundle.spec.get("preprocessing") != preprocessing:
        raise BundleError(f"bundle {bundle.name}/{bundle.version} was trained with "
                          f"preprocessing {bundle.spec.get('preprocessing')!r}; this qcd "
                          f"has {preprocessing!r}")
    state = torch.load(bundle.weights_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()
