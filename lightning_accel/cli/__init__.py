"""The ``lightning-accel`` command line and the main job it runs."""

from lightning_accel.cli.main import main

__all__ = ["main"]
