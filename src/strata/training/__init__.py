"""Strata training."""
