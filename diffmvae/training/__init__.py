"""Training: the LightningModule around a model (``module``), the callbacks configs name (``callbacks``: EMA,
feed-forward warm-up, warm starts, sample grids, checkpoints on interrupt) and the checkpoint writer and reader
(``checkpoint_io``: atomic writes, ``weights_only`` reads)."""

from diffmvae.training.callbacks import EMA, FeedForwardWarmup, SampleGrid, SaveOnInterrupt, WarmStart
from diffmvae.training.module import TrainingModule, split_batch

__all__ = ["EMA", "FeedForwardWarmup", "SampleGrid", "SaveOnInterrupt", "TrainingModule", "WarmStart", "split_batch"]
