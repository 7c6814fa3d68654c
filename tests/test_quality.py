"""Real photos, real weights: a broken weight mapping or input normalisation cannot pass."""
import torch

from deepret.datasets import load_benchmark
from deepret.extract import ExtractSettings
from deepret.models import create_model
from deepret.pipeline import RunOptions, benchmark_features, evaluate_features

from conftest import require_data


def _map(net) -> float:
    bench = load_benchmark("oxford5k-mini", require_data())
    features, _, cached = benchmark_features(net, bench, RunOptions(ExtractSettings(size=512), progress=False))
    assert not cached
    return evaluate_features(features, bench)["old"].map


def test_default_model_imagenet_weights_reach_70_map_on_oxford5k_mini(lite0):
    assert _map(lite0) >= 70.0


def test_same_architecture_with_random_weights_is_far_lower():
    torch.manual_seed(0)
    random_map = _map(create_model("efficientnet_lite0-gem", weights="random"))
    assert 25.0 <= random_map <= 55.0, random_map
