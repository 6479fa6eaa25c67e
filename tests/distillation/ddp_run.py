"""Run by tests/distillation/test_ddp.py: two CPU ranks (gloo), each built from its own seed.

Each rank saves its teacher's tensors, so the test can check they are rank 0's on both.
"""

import os
import sys
import warnings
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_accel import ClassificationModule, DigitsDataModule, Distillation

if __name__ == "__main__":
    warnings.filterwarnings("ignore")
    out_dir = Path(sys.argv[1])
    torch.manual_seed(int(os.environ.get("LOCAL_RANK", "0")))  # different weights per rank
    module = ClassificationModule("small_cnn", input_size=8, lr=0.05)
    initial = {k: v.clone() for k, v in module.state_dict().items()}
    distillation = Distillation()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=0,
        callbacks=[distillation],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, datamodule=DigitsDataModule())
    assert distillation.teacher is not None
    torch.save(
        {"teacher": distillation.teacher.state_dict(), "initial": initial},
        out_dir / f"rank{trainer.global_rank}.pt",
    )
