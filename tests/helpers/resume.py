"""Code for tests/integration/test_resume.py, loaded by the ``fit`` subprocess from ``helpers.resume``
(tests/ is on its PYTHONPATH).

``StepLog`` appends ``<global step> <loss>`` for every training batch to ``$CBIR_TEST_STEP_LOG`` (the
loss as ``float.hex``, so equal means bit-equal), and SIGKILLs its own process (no cleanup, as a preempted
job or the OOM killer would) when a batch starts at the step ``$CBIR_TEST_KILL_AT_STEP``.

``GlobalRandomLoss`` is the demo's loss scaled by a factor drawn from all three global generators
(Python's, NumPy's, torch's), as a sampling miner or dropout would draw: a resumed run equals the
uninterrupted one only if those generators are resumed too.
"""

from __future__ import annotations

import os
import random
import signal

import numpy as np
import pytorch_lightning as pl
import torch

from cbir_lightning.losses import InBatchSoftmaxLoss


class StepLog(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if str(trainer.global_step) == os.environ.get("CBIR_TEST_KILL_AT_STEP"):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = float(outputs["loss"] if isinstance(outputs, dict) else outputs)
        with open(os.environ["CBIR_TEST_STEP_LOG"], "a") as log:
            log.write(f"{trainer.global_step - 1} {loss.hex()}\n")


class GlobalRandomLoss(InBatchSoftmaxLoss):
    def forward(self, embeddings, labels, indices_tuple=None):
        factor = 1 + float(torch.rand(())) + float(np.random.rand()) + random.random()
        return factor * super().forward(embeddings, labels, indices_tuple)
