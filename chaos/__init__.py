"""Chaos on demand: which faults exist, and a monkey that injects them at random."""
