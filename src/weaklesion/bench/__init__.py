"""Reproductions of the papers' experiments (``weaklesion bench``)."""
