"""Training shared by every training stage: ``loop`` (the one training loop: optimizer,
schedule, AMP, divergence checks, freeze/dropout options), ``aligned`` (aligned weight
regularisation) and ``distributed`` (torchrun, DDP and the collectives the stages use)."""
