"""Strata experiments."""
