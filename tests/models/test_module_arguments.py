"""The shared argument checks, and ``ClassificationModule`` refusing bad arguments with them."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_accel import ClassificationModule
from lightning_accel.callbacks import base
from lightning_accel.utilities.validation import check_bool, check_int, check_number

# ------------------------------------------------------------------ lightning_accel.utilities


def _message(check, *args: object) -> str:
    with pytest.raises(ValueError) as caught:
        check(*args)
    return str(caught.value)


@pytest.mark.parametrize(
    ("value", "minimum", "optional"),
    [("x", 1, False), (True, 1, False), (2.5, 1, False), (0, 1, False), (None, 1, False)]
    + [(-1, 0, True), (False, 0, True), ("3", 1, True)],
)
@pytest.mark.bad_input("constructor")
def test_check_int_says_what_the_callbacks_check_says(
    value: object, minimum: int, optional: bool
) -> None:
    args = (value, "steps", "F(steps=2)", minimum, optional)
    message = _message(check_int, *args)
    assert message == _message(base.check_int, *args)
    assert message.startswith("steps must be an integer >= ") and message.endswith("F(steps=2)")


@pytest.mark.parametrize("value", ["0.5", True, None, math.nan, math.inf, -0.1, 1.5])
@pytest.mark.bad_input("constructor")
def test_check_number_in_a_closed_range_says_what_the_callbacks_check_says(value: object) -> None:
    args = (value, "ratio", "F(ratio=0.5)", 0, 1)
    message = _message(check_number, *args)
    assert message == _message(base.check_number, *args)
    assert message == f"ratio must be a number in [0, 1]; got {value!r}. Example: F(ratio=0.5)"


@pytest.mark.parametrize("value", [0, 1, "yes", None])
@pytest.mark.bad_input("constructor")
def test_check_bool_says_what_the_callbacks_check_says(value: object) -> None:
    message = _message(check_bool, value, "flag")
    assert message == _message(base.check_bool, value, "flag")
    assert message == f"flag must be True or False; got {value!r}"


def test_checks_return_valid_values() -> None:
    assert check_int(3, "n", "f(n=3)") == 3 and check_int(None, "n", "f()", optional=True) is None
    assert check_number(1, "x", "f(x=1)", 0, 1) == 1.0 and check_bool(False, "b") is False
    assert check_number(10**12, "lr", "f(lr=0.1)", 0, low_open=True) == 1e12  # no upper bound


@pytest.mark.parametrize(
    ("value", "bounds", "message"),
    [
        (math.inf, {}, r"x must be a finite number >= 0; got inf\. Example: f\(x=1\)"),
        (-math.inf, {}, r"x must be a finite number >= 0; got -inf"),
        (math.nan, {}, r"x must be a finite number >= 0; got nan"),
        (0, {"low_open": True}, r"x must be a finite number > 0; got 0\."),
        (1, {"high": 1, "high_open": True}, r"x must be a number in \[0, 1\); got 1\."),
        (0.0, {"high": 1, "low_open": True}, r"x must be a number in \(0, 1\]; got 0\.0\."),
    ],
)
@pytest.mark.bad_input("constructor")
def test_check_number_open_bounds_and_non_finite_values(
    value: float, bounds: dict, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        check_number(value, "x", "f(x=1)", 0, **bounds)


# ------------------------------------------------------------------ ClassificationModule


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(model=None), r"model must be a zoo name \(.*small_cnn.*\) or an nn.Module; got "),
        (dict(model={"name": "small_cnn"}), r"model must be a zoo name .*; got dict"),
        (dict(lr="0.1"), r"lr must be a finite number > 0; got '0.1'\. Example: "),
        (dict(lr=0), r"lr must be a finite number > 0; got 0\."),
        (dict(lr=-0.1), r"lr must be a finite number > 0; got -0.1"),
        (dict(lr=math.nan), r"lr must be a finite number > 0; got nan"),
        (dict(lr=math.inf), r"lr must be a finite number > 0; got inf"),
        (dict(lr=True), r"lr must be a finite number > 0; got True"),
        (dict(num_classes=True), r"num_classes must be an integer >= 1; got True"),
        (dict(num_classes=2.5), r"num_classes must be an integer >= 1; got 2.5"),
        (dict(num_classes=0), r"num_classes must be an integer >= 1; got 0"),
        (dict(in_channels="1"), r"in_channels must be an integer >= 1; got '1'"),
        (dict(input_size="8"), r"input_size must be an integer >= 1; got '8'"),
        (dict(input_size=0), r"input_size must be an integer >= 1; got 0"),
        (dict(weight_decay=-1), r"weight_decay must be a finite number >= 0; got -1"),
        (dict(weight_decay=math.nan), r"weight_decay must be a finite number >= 0; got nan"),
        (dict(cosine_epochs=0), r"cosine_epochs must be an integer >= 1 or None; got 0"),
        (dict(cosine_epochs="3"), r"cosine_epochs must be an integer >= 1 or None; got '3'"),
        (dict(optimizer=None), r"optimizer must be 'sgd' or 'adamw'; got None\. Example: "),
    ],
    ids=lambda v: ",".join(f"{k}={x!r}" for k, x in v.items()) if isinstance(v, dict) else "msg",
)
@pytest.mark.bad_input("constructor")
def test_classification_module_refuses_bad_arguments_naming_them(
    kwargs: dict, message: str
) -> None:
    settings: dict = dict(model="small_cnn", input_size=8)
    settings.update(kwargs)
    with pytest.raises(ValueError, match=message):
        ClassificationModule(**settings)


def test_classification_module_accepts_edge_values_and_keeps_them_as_hyperparameters() -> None:
    module = ClassificationModule(
        torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 2)),
        num_classes=2,
        in_channels=3,
        lr=1,
        weight_decay=0,
        cosine_epochs=1,
        input_size=2,
        optimizer="adamw",
    )
    assert module.hparams["lr"] == 1 and module.hparams["weight_decay"] == 0
    assert module(module.example_input_array).shape == (1, 2)
    assert ClassificationModule("small_cnn", cosine_epochs=None).hparams["cosine_epochs"] is None
