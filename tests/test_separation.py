"""deepret.separation on cases with a known answer."""
import numpy as np
import pytest

from deepret.errors import DeepretError
from deepret.separation import knn_accuracy, label_map, separation, silhouette


def two_clusters(n: int = 100, dim: int = 16, spread: float = 0.05, seed: int = 0):
    """Two tight groups around orthogonal directions, labels 'a' then 'b'."""
    rng = np.random.default_rng(seed)
    centres = np.eye(dim)[:2]
    X = np.concatenate([c + spread * rng.standard_normal((n, dim)) for c in centres])
    return X, ["a"] * n + ["b"] * n


def test_well_separated_clusters_score_near_one_and_shuffled_labels_near_chance():
    X, labels = two_clusters()
    assert silhouette(X, labels) > 0.9
    assert knn_accuracy(X, labels) == 100.0 and label_map(X, labels) == pytest.approx(100.0)
    shuffled = list(np.random.default_rng(1).permutation(labels))
    assert abs(silhouette(X, shuffled)) < 0.05
    assert 35.0 < knn_accuracy(X, shuffled) < 65.0  # chance is 50% for two equal classes
    assert 40.0 < label_map(X, shuffled) < 60.0


def test_label_map_and_knn_by_hand():
    # on a line of angles: a0 a1 b0 b1 (a's close together, b's close together, a1 nearer b0 than a0 is)
    angles = np.radians([0, 10, 30, 40])
    X = np.stack([np.cos(angles), np.sin(angles)], 1)
    labels = ["a", "a", "b", "b"]
    # every image's nearest other image is its own label's: AP 1 for all, 1-NN accuracy 100%
    assert label_map(X, labels) == pytest.approx(100.0) and knn_accuracy(X, labels, k=1) == 100.0
    # swap the middle labels: rankings by angle distance, relevant marked
    labels = ["a", "b", "a", "b"]
    aps = [1 / 2,  # 0 (a): 10 b, 30 a, 40 b
           1 / 3,  # 10 (b): 0 a, 30 a, 40 b
           1 / 3,  # 30 (a): 40 b, 10 b, 0 a
           1 / 2]  # 40 (b): 30 a, 10 b, 0 a
    assert label_map(X, labels) == pytest.approx(100.0 * np.mean(aps))
    assert knn_accuracy(X, labels, k=1) == 0.0  # every nearest neighbour has the other label


def test_separation_of_labelled_from_unlabelled_images():
    X, labels = two_clusters(n=30)
    far = np.random.default_rng(2).standard_normal((30, 16)) * 0.05 + np.eye(16)[5]
    s = separation(np.concatenate([X, far]), labels + [None] * 30)
    assert (s["images"], s["labelled"]) == (90, 60)
    assert s["silhouette"] > 0.9 and s["knn_accuracy"] == 100.0
    assert s["unlabelled_silhouette"] > 0.5 and s["unlabelled_knn_accuracy"] == 100.0
    all_labelled = separation(X, labels)
    assert all_labelled["unlabelled_silhouette"] is None and all_labelled["unlabelled_knn_accuracy"] is None


def test_undefined_and_bad_input():
    X, _ = two_clusters(n=5)
    assert silhouette(X, ["a"] * 10) is None  # one label: no silhouette
    assert label_map(X, list("abcdefghij")) is None  # nobody has a positive
    with pytest.raises(DeepretError, match="one label per row"):
        knn_accuracy(X, ["a", "b"])
