"""rm_ds: Bradley-Terry reward-model training on DeepSpeed, exact across ranks and micro-steps."""

__version__ = "0.1.0"
