"""Accuracy and speed benchmarks."""
