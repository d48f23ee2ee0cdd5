"""The ``glidekit`` command line. Each sub-command lives in its own module with a ``register``.

Layer: the top face; may import every package of glidekit (it is the only one that imports
``glidekit.train``) except ``glidekit.compat``. A thin face: flags become a run's options
(:mod:`glidekit.pipelines.options`), checked there, spelled back as flags in errors.
"""
