"""Strata data."""
