"""Readers, synthetic generators, sequences and splits, prompt templates."""
