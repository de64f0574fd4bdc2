"""Functional core: numpy/torch in, floats out."""
