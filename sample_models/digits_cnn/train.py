"""Train the digits CNN: python -m sample_models.digits_cnn.train"""

from pathlib import Path

import torch

from sample_models.digits_cnn.model import build
from sample_models.digits_common import train_digits

if __name__ == "__main__":
    torch.manual_seed(0)
    train_digits(build(), Path(__file__).parent / "model.safetensors", shape=(1, 8, 8), epochs=12)
