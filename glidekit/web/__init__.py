"""``glidekit serve``: GLIDE in the browser (Gradio), safe to share with other people.

:func:`build_app` (a ``gr.Blocks`` for a :class:`WebConfig`) and :func:`launch` need the
``web`` extra (``pip install glidekit[web]``); :mod:`glidekit.web.jobs` (limits, input checks,
running the pipelines) does not.

Layer: a face, like the command line: imports :mod:`glidekit.pipelines` and everything below
it; never :mod:`glidekit.cli`, :mod:`glidekit.train` or :mod:`glidekit.compat`.
"""

from glidekit.web.jobs import InputError, JobResult, Jobs, Limits, WebConfig

__all__ = ["InputError", "JobResult", "Jobs", "Limits", "WebConfig", "build_app", "launch"]


def build_app(config: WebConfig, jobs: Jobs | None = None):
    """See :func:`glidekit.web.app.build_app`."""
    from glidekit.web.app import build_app as _build

    return _build(config, jobs)


def launch(config: WebConfig, host: str = "127.0.0.1", port: int = 7860, **kwargs):
    """See :func:`glidekit.web.app.launch`."""
    from glidekit.web.app import launch as _launch

    return _launch(config, host, port, **kwargs)
