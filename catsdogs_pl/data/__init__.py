"""Data stage: sources, cleaning, split, cache and the LightningDataModule."""
