"""cbmir: content-based medical image retrieval with frozen backbones."""

__version__ = "0.1.0"
