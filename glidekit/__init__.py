"""glidekit: run, edit with and train GLIDE (Nichol et al., 2021, arXiv 2112.10741).

The packages, top to bottom (``pyproject.toml`` declares the layering; ``lint-imports`` checks
it): the faces ``cli``, ``web``, ``train``, ``compat``, ``bench``; ``pipelines``;
``checkpoints`` and ``guidance``; ``clip``, ``diffusion``, ``data``; ``nn``; ``tokenizer``; the
utilities ``errors``, ``fileio``, ``tensorfile``, ``models``. Each imports only from below it.
"""

__version__ = "0.1.0"
