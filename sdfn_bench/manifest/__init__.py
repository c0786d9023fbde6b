"""Manifests: the one CSV schema for NIH, the synthetic cohort and any user data."""
