"""Numerical analyses of trained autoencoders, shared by the ``ae`` analysis commands."""
