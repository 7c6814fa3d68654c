"""Retrieval networks: `create_model(name, weights=...)`, `load(path)`, `save(net, path)`."""
from deepret.models.network import (HEADS, RetrievalNet, create_model, get_model, load, model_fingerprint, parse_name,
                                    save)
from deepret.models.pooling import GeM, MAC, SPoC, gem, l2n, mac, spoc
from deepret.models.registry import DEFAULT_MODEL, list_models

__all__ = ["HEADS", "RetrievalNet", "create_model", "get_model", "load", "model_fingerprint", "parse_name", "save", "GeM", "MAC",
           "SPoC", "gem", "l2n", "mac", "spoc", "DEFAULT_MODEL", "list_models"]
