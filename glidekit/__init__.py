"""glidekit: run, edit with and train GLIDE (Nichol et al., 2021, arXiv 2112.10741)."""

__version__ = "0.1.0"
