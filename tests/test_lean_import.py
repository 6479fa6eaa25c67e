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


def _modules_after(code: str) -> set[str]:
    probe = (
        f"import sys\n{code}\n"
        "print('loaded:', *(m for m in ('torch', 'lightning', 'onnx', 'wandb') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(out.stdout.strip().splitlines()[-1].split()[1:])  # the last line: after --help


def test_the_package_root_imports_neither_torch_nor_lightning() -> None:
    assert _modules_after("import lightning_accel") == set()
    # public names still import, on first use
    assert "torch" in _modules_after("from lightning_accel import GradualPruning")


def test_help_version_and_recipes_answer_without_torch() -> None:
    # `lightning-accel --help` took 17.6 s when the package root imported Lightning.
    for argv in (["--help"], ["--version"], ["fit", "--help"], ["sweep", "--help"]):
        code = (
            "from lightning_accel.cli.main import main\n"
            f"try:\n    main({argv!r})\nexcept SystemExit:\n    pass"
        )
        assert _modules_after(code) == set(), argv
    assert _modules_after("from lightning_accel.cli.main import main; main(['recipes'])") == set()


def test_version_is_printed() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lightning_accel.cli", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("lightning-accel 0.")
