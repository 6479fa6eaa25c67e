import subprocess
import sys


def test_import_pulls_no_optional_runtime_and_no_cuda() -> None:
    # torchvision is not listed: torchmetrics itself imports it whenever it is installed.
    code = (
        "import sys, lightning_accel, torch;"
        "heavy = [m for m in ('tensorrt', 'wandb', 'onnxruntime', 'timm') if m in sys.modules];"
        "print(heavy, torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[] False"
