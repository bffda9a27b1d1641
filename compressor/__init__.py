"""compress: make a saved PyTorch checkpoint physically smaller and faster, and measure it."""

__version__ = "0.1.0"
