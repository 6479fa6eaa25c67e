"""Serve an exported model over HTTP with LitServe: ``lightning-accel serve EXPORT_DIR``.

- :mod:`~lightning_accel.serving.server`: ``serve(...)`` builds the server, ``run()`` listens;
- :mod:`~lightning_accel.serving.api`: the LitServe API (dynamic batching, one runtime call);
- :mod:`~lightning_accel.serving.inputs`: request bodies to checked model inputs;
- :mod:`~lightning_accel.serving.body`: the body size limit;
- :mod:`~lightning_accel.serving.metrics`: Prometheus metrics;
- :mod:`~lightning_accel.serving.checks`: what is refused before starting (exit code 2).

Nothing here imports torch or Lightning: the container image has neither.
"""

from lightning_accel.serving.checks import ServeError
from lightning_accel.serving.server import ModelServer, serve

__all__ = ["ModelServer", "ServeError", "serve"]
