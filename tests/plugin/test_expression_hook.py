"""A third-party adapter writes its own optimizers in the reproduce line (padaudit_expression)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import pytest_padaudit
from pytest_padaudit import audit
from pytest_padaudit.render.repro import expression, public_name

from support.numpy_adapter import NumpyAdapter, NumpyTagger


class ToySGD:
    """The toy framework's optimizer: the NumPy handle steps with ``float(spec)`` decay."""

    def __init__(self, decay: float = 0.0) -> None:
        self.decay = decay

    def __float__(self) -> float:
        return self.decay


class ToyAdapter(NumpyAdapter):
    """The NumPy adapter, answering for its own optimizer and its class too."""

    @pytest_padaudit.hookimpl
    def padaudit_expression(self, value: object) -> str | None:
        if value is ToySGD:
            return "toy.SGD"
        if isinstance(value, ToySGD):
            return f"toy.SGD(decay={value.decay!r})"
        return None


@pytest.fixture
def toy_adapter() -> Iterator[ToyAdapter]:
    adapter = ToyAdapter()
    pytest_padaudit.register(adapter)
    yield adapter
    pytest_padaudit.unregister(adapter)


def test_a_registered_adapter_writes_its_optimizer_in_the_reproduce_line(toy_adapter):
    report = audit(NumpyTagger(masked=True), optimizer=ToySGD(0.5), checks=("update",))
    assert (
        report.reproduce == "audit(model, seed=0, checks=('update',), optimizer=toy.SGD(decay=0.5))"
    )
    assert expression({"opt": ToySGD(0.25)}) == "{'opt': toy.SGD(decay=0.25)}"


def test_a_registered_adapter_names_its_own_classes(toy_adapter):
    assert public_name(ToySGD) == "toy.SGD" and expression(ToySGD) == "toy.SGD"
    assert expression(float) == "builtins.float"  # no adapter knows it: its own name


def test_without_the_adapter_its_objects_get_their_generic_names():
    assert public_name(ToySGD) == f"{__name__}.ToySGD"
    assert expression(ToySGD(0.5)) == f"{__name__}.ToySGD"
