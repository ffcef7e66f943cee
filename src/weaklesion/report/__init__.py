"""Figures and report folders."""

from weaklesion.report.figures import plot_froc, plot_reliability, plot_slices

__all__ = ["plot_froc", "plot_reliability", "plot_slices"]
