"""Strata: train and study language models with the Hugging Face stack, offline-first."""

__version__ = "0.1.0"
