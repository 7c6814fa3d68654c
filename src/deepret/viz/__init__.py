"""Figures: top-k results, t-SNE maps by landmark, training tuples, loss curves."""

from deepret.viz.topk import topk_figure
from deepret.viz.triplets import triplets_figure
from deepret.viz.tsne import embed_tsne, image_landmarks, tsne_figure, tsne_plot

__all__ = ["topk_figure", "triplets_figure", "embed_tsne", "image_landmarks", "tsne_figure", "tsne_plot"]
