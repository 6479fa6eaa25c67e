"""``python -m lightning_accel.cli``: the same as the ``lightning-accel`` command."""

from lightning_accel.cli.main import main

raise SystemExit(main())
