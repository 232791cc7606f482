"""StarGAN v2 on Ray: distributed training, tuning and evaluation."""

__version__ = "0.1.0"
