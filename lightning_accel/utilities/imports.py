"""Optional dependencies, probed once and imported only where they are needed."""

from __future__ import annotations

from types import ModuleType

from lightning_utilities.core.imports import RequirementCache

_TORCHVISION_AVAILABLE = RequirementCache("torchvision")
_TIMM_AVAILABLE = RequirementCache("timm")
_TENSORRT_AVAILABLE = RequirementCache("tensorrt")
_ONNXRUNTIME_AVAILABLE = RequirementCache("onnxruntime")
_OPENVINO_AVAILABLE = RequirementCache("openvino")
_SKLEARN_AVAILABLE = RequirementCache("scikit-learn")

_INSTALL_HINTS = {
    "torchvision": "pip install 'lightning-accel[zoo]'",
    "timm": "pip install 'lightning-accel[zoo]'",
    "tensorrt": "pip install 'lightning-accel[tensorrt]' (needs an NVIDIA GPU and driver)",
    "openvino": 'pip install "lightning-accel[openvino]"',
    "sklearn": "pip install scikit-learn (or 'lightning-accel[dev]')",
}


def require(module_name: str, purpose: str) -> ModuleType:
    """Import an optional dependency or raise an error naming the install command.

    Args:
        module_name: The importable name, e.g. ``"torchvision"``.
        purpose: What the caller needs it for, used in the message.

    Raises:
        ModuleNotFoundError: If the module is not installed.
    """
    import importlib

    try:
        return importlib.import_module(module_name)
    except ImportError as err:
        hint = _INSTALL_HINTS.get(module_name, f"pip install {module_name}")
        raise ModuleNotFoundError(
            f"{purpose} needs `{module_name}`, which is not installed. Install it with: {hint}"
        ) from err
