"""Small real models with their training scripts, checkpoints and plans."""
