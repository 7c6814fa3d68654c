"""deepret: instance-level image retrieval with CNN global descriptors."""
__version__ = "0.1.0"


def load(path):
    """Rebuild a saved retrieval network from its checkpoint (see deepret.models.load)."""
    from deepret.models import load as _load

    return _load(path)
