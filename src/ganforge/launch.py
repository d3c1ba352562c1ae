"""torchrun on this machine: the one place the command that starts N training ranks is built.

``ganforge train --nproc N`` relaunches itself through it, and so does the pipeline's train step;
the cluster engines (TrainJob, PyTorchJob) start torchrun in their pods from their own variables
(``ganforge.platform.cluster_jobs.train_command``).
"""

from __future__ import annotations

import sys


def torchrun_command(
    nproc: int, args: list[str], module: str = "ganforge.cli", python: str = sys.executable
) -> list[str]:
    """``python -m torch.distributed.run --standalone --nproc-per-node=N -m MODULE ARGS``.

    ``--standalone``: a c10d rendezvous on localhost at a free port, so parallel runs do not
    collide. The ranks get their settings in ``args`` (a ``--config-json``, not torchrun's own
    options: torchrun's parser pre-scans the forwarded arguments for abbreviations of its options
    and rejects ``--nproc`` as ambiguous, Python 3.11).
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: torchrun needs 1 or more processes")
    return [python, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", module, *args]
