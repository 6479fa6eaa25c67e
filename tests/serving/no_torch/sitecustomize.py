"""Put on PYTHONPATH of a server under test: importing torch or Lightning there fails loudly.

Every process of the server (the HTTP server and the spawned runtime workers) inherits the
variable, so a server that runs at all proves the serving path is free of them, as in the
torch-free container image.
"""

import importlib.abc
import sys

BLOCKED = ("torch", "lightning", "pytorch_lightning", "torchmetrics")


class _Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} imported on the serving path (blocked by the test)")
        return None


sys.meta_path.insert(0, _Refuse())
