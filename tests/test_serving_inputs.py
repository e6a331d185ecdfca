"""Request validation without a running app: what reaches the model is bounded."""

import pytest

from unime.config import ServeLimits
from unime.serving.api import InputError, Item, check_item


def test_the_instruction_counts_towards_max_text_chars():
    limits = ServeLimits(max_text_chars=20)
    assert check_item(Item(text="red circles"), limits, "query", "Find:") == ("Find:\nred circles", None)
    with pytest.raises(InputError, match="instruction: with query.text, longer than max_text_chars=20") as error:
        check_item(Item(text="red circles"), limits, "query", "Find an image for the caption:")
    assert error.value.status == 413
    with pytest.raises(InputError, match=r"input\[3\].text: longer than max_text_chars=20"):
        check_item(Item(text="x" * 21), limits, "input[3]")
    # an instruction alone (an image query) is bounded too
    with pytest.raises(InputError, match="instruction"):
        check_item(Item(image=None, text="x"), limits, "query", "y" * 1_000_000)
