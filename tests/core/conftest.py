import pytest
import torch

from compression_core import zoo


@pytest.fixture(scope="session")
def digits():
    """A DigitsCNN trained on sklearn digits (seeded, a few seconds) and its data split."""
    torch.manual_seed(0)
    model, split = zoo.train_digits_cnn(seed=0)
    return model, split
