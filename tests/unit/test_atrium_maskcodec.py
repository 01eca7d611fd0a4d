"""The mask finding payload: compact run-length coding, exact round trip, strict decoding."""

from __future__ import annotations

import json

import numpy as np
import pytest

from qcd.outputs.maskcodec import (
    ENCODING,
    decode_mask,
    encode_mask,
    is_mask_payload,
    mask_payload,
)


@pytest.mark.parametrize("mask", [
    np.zeros((3, 4, 5), bool), np.ones((2, 3, 4), bool), np.zeros((0, 4, 4), bool),
    np.random.default_rng(0).random((7, 9, 11)) > 0.5,
    np.pad(np.ones((3, 3, 3), bool), 2),
])
def test_round_trip(mask: np.ndarray) -> None:
    encoded = json.loads(json.dumps(encode_mask(mask)))  # survives the JSON column
    out = decode_mask(encoded)
    assert out.dtype == bool and out.shape == mask.shape and np.array_equal(out, mask)


def test_a_realistic_mask_is_small() -> None:
    mask = np.zeros((110, 320, 320), bool)
    z, y, x = np.ogrid[:110, :320, :320]
    mask |= ((z - 55) / 30) ** 2 + ((y - 150) / 25) ** 2 + ((x - 170) / 28) ** 2 <= 1
    assert len(json.dumps(encode_mask(mask))) < 20_000


def test_corrupt_or_foreign_data_is_refused() -> None:
    good = encode_mask(np.ones((2, 2, 2), bool))
    with pytest.raises(ValueError, match="encoding"):
        decode_mask({**good, "encoding": "png"})
    with pytest.raises(ValueError, match="decoded"):
        decode_mask({**good, "data": "!!!"})
    with pytest.raises(ValueError, match="cover"):
        decode_mask({**good, "shape": [3, 2, 2]})


def test_payload_ties_frames_to_instances() -> None:
    mask = np.zeros((3, 2, 2), bool)
    payload = mask_payload(mask, ["1.2.3", "1.2.4", "1.2.5"], "left_atrium", label="LA")
    assert is_mask_payload(payload) and payload["mask"]["encoding"] == ENCODING
    assert payload["sop_instance_uids"] == ["1.2.3", "1.2.4", "1.2.5"] and payload["label"] == "LA"
    assert not is_mask_payload({}) and not is_mask_payload(None)
    assert not is_mask_payload({"mask": {"encoding": "x"}, "sop_instance_uids": []})
    with pytest.raises(ValueError, match="UID"):
        mask_payload(mask, ["1.2.3"], "left_atrium")
