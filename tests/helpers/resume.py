"""A callback for tests/integration/test_resume.py, loaded by the ``fit`` subprocess as
``helpers.resume.StepLog`` (tests/ is on its PYTHONPATH).

``StepLog`` appends the global step of every training batch it starts to ``$CBIR_TEST_STEP_LOG``, and
SIGKILLs its own process (no cleanup, as a preempted job or the OOM killer would) when that step equals
``$CBIR_TEST_KILL_AT_STEP``.
"""

from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class StepLog(pl.Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        with open(os.environ["CBIR_TEST_STEP_LOG"], "a") as log:
            log.write(f"{trainer.global_step}\n")
        if str(trainer.global_step) == os.environ.get("CBIR_TEST_KILL_AT_STEP"):
            os.kill(os.getpid(), signal.SIGKILL)
