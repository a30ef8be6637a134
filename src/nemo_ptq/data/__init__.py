"""Evaluation and calibration sets: sources, preparation, and the layout later stages read."""
