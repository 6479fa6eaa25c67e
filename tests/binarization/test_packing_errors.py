"""load_packed on files with the right format string but a missing or mistyped field."""

import pytest
import torch
from torch import nn

from lightning_accel.binarization import binarize_layer
from lightning_accel.binarization.packing import FORMAT, load_packed, save_packed


def _binary_net() -> nn.Module:
    layer = binarize_layer(nn.Conv2d(2, 4, 3, bias=False), True, True, "channel", "clipped")
    layer.progress.fill_(1.0)
    return nn.Sequential(layer)


def _valid_content(tmp_path) -> dict:
    save_packed(_binary_net(), tmp_path / "good.packed")
    return torch.load(tmp_path / "good.packed", weights_only=True)


def _without(mapping: dict, key: str) -> dict:
    return {k: v for k, v in mapping.items() if k != key}


ENTRY = "0.weight"


@pytest.mark.parametrize(
    ("corrupt", "what"),
    [
        (lambda c: _without(c, "state"), r"the 'state' field is missing"),
        (lambda c: _without(c, "packed"), r"the 'packed' field is missing"),
        (lambda c: {**c, "packed": [1, 2]}, r"'packed' is of type list, not a dict"),
        (
            lambda c: {**c, "state": {**c["state"], "x": 3}},
            r"state entry 'x' is of type int, not a tensor",
        ),
        (
            lambda c: {**c, "packed": {ENTRY: "bits"}},
            r"packed entry '0.weight' is of type str, not a dict",
        ),
        (
            lambda c: {**c, "packed": {ENTRY: _without(c["packed"][ENTRY], "scale")}},
            r"packed entry '0.weight' lacks scale",
        ),
        (
            lambda c: {**c, "packed": {ENTRY: {**c["packed"][ENTRY], "bits": [0, 1]}}},
            r"0.weight.bits is of type list, not a tensor",
        ),
        (
            lambda c: {
                **c,
                "packed": {ENTRY: {**c["packed"][ENTRY], "bits": torch.zeros(9)}},
            },
            r"0.weight.bits holds torch.float32, not torch.uint8",
        ),
        (
            lambda c: {**c, "packed": {ENTRY: {**c["packed"][ENTRY], "shape": "4x2x3x3"}}},
            r"0.weight.shape is '4x2x3x3', not a list of positive integers",
        ),
        (
            lambda c: {**c, "packed": {ENTRY: {**c["packed"][ENTRY], "scale": torch.ones(3)}}},
            r"0.weight.scale holds 3 values, not 1 or 4",
        ),
    ],
)
@pytest.mark.bad_input("file system")
def test_crafted_file_with_a_bad_field_is_not_a_packed_model(tmp_path, corrupt, what) -> None:
    content = _valid_content(tmp_path)
    assert content["format"] == FORMAT
    path = tmp_path / "crafted.packed"
    torch.save(corrupt(content), path)
    model = _binary_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=rf"crafted.packed is not a packed model: {what}"):
        load_packed(path, model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_valid_crafted_round_trip_still_loads(tmp_path) -> None:
    source = _binary_net()
    save_packed(source, tmp_path / "m.packed")
    target = _binary_net()
    load_packed(tmp_path / "m.packed", target)
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        torch.testing.assert_close(target.eval()(x), source.eval()(x))
