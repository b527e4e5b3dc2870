"""One wording for every refused input."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, Field, ValidationError
from spot_hpc.settings import ControlPlaneSettings, SettingsError
from spot_hpc.validation import describe_validation_error


class Window(BaseModel):
    hours: float = Field(gt=0)
    label: str


def _error(value: object) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        Window.model_validate(value)
    return caught.value


def test_every_problem_is_named_with_its_field():
    # GIVEN an input with two bad fields
    exc = _error({"hours": -1})
    # WHEN it is described
    text = describe_validation_error(exc, "window")
    # THEN both problems, each after its field
    assert text == "hours: Input should be greater than 0; label: Field required"


def test_a_problem_with_the_whole_input_gets_the_given_name():
    # GIVEN an input that is not an object at all
    exc = _error([1, 2])
    # WHEN it is described
    text = describe_validation_error(exc, "window")
    # THEN the problem is put on the whole input
    assert text.startswith("window: ")


def test_bad_environment_names_the_variable_and_the_problem():
    # GIVEN an environment with a negative retry budget and no tables
    # WHEN the settings are read
    with pytest.raises(SettingsError) as caught:
        ControlPlaneSettings.from_environ({"STAGE_RETRY_BUDGET": "-1"})
    # THEN the message names the variable and what is wrong with it, not its value
    assert "STAGE_RETRY_BUDGET: Input should be greater than or equal to 0" in str(caught.value)
