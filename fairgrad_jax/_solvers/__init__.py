"""Weightings: pure maps from a K×K Gram matrix to K task weights."""
