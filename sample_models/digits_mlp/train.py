"""Train the digits MLP: python -m sample_models.digits_mlp.train"""

from pathlib import Path

import torch

from sample_models.digits_common import train_digits
from sample_models.digits_mlp.model import build

if __name__ == "__main__":
    torch.manual_seed(0)
    train_digits(build(), Path(__file__).parent / "model.safetensors", shape=(64,), epochs=30)
