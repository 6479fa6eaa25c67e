"""Run by tests/callbacks/test_pruning_ddp.py: two CPU processes (gloo) prune under DDP.

Each rank saves its final parameter shapes and zero masks, so the test can compare ranks.
"""

import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_accel import Binarize, ClassificationModule, DigitsDataModule, GradualPruning

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out_dir, mode = Path(sys.argv[1]), sys.argv[2]
    pl.seed_everything(0)
    module = ClassificationModule("small_cnn", input_size=8, lr=0.05)
    if mode == "binarize":  # data-dependent initialization (activation thresholds)
        pruning = Binarize(start_epoch=0, end_epoch=2)
    else:
        pruning = GradualPruning(0.5, mode=mode, end_epoch=2, update_every_n_steps=3)
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=3,
        callbacks=[pruning],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    torch.save(
        {
            "shapes": {k: tuple(v.shape) for k, v in module.state_dict().items()},
            "masks": {k: (v == 0) for k, v in module.state_dict().items() if k.endswith("weight")},
            "weights": module.state_dict(),
            "sparsity": getattr(pruning, "applied_sparsity", getattr(pruning, "progress", None)),
            "optimizer_params": sum(
                p.numel() for g in trainer.optimizers[0].param_groups for p in g["params"]
            ),
        },
        out_dir / f"rank{trainer.global_rank}.pt",
    )
