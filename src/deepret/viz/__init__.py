"""Figures for retrieval results."""

from deepret.viz.topk import topk_figure

__all__ = ["topk_figure"]
