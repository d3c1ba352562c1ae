"""torchrun on this machine: the one place the command that starts N training ranks is built.

``ganforge train --nproc N`` relaunches itself through it, and the pipeline's train step starts its ranks
(``ganforge.platform.worker``) through it;
the cluster engines (TrainJob, PyTorchJob) start torchrun in their pods from their own variables
(``ganforge.platform.cluster_jobs.train_command``).

``python -m ganforge.launch`` is torchrun (``torch.distributed.run``) with the exit status of a
stop: on SIGTERM or SIGINT torchrun passes the signal to the ranks, waits for them (they stop at
one step and write a checkpoint, ``ganforge.stop``) and then fails with a SignalException (exit
status 1); here it exits 128 + the signal instead (143, 130), as the ranks do. When the ranks
themselves were signalled, torchrun reports them failed with 143 or 130; that status is kept too.
"""

from __future__ import annotations

import sys

from .stop import STOP_STATUSES


def torchrun_command(
    nproc: int, args: list[str], module: str = "ganforge.cli", python: str = sys.executable
) -> list[str]:
    """``python -m ganforge.launch --standalone --nproc-per-node=N -m MODULE ARGS`` (torchrun, see above).

    ``--standalone``: a c10d rendezvous on localhost at a free port, so parallel runs do not
    collide. The ranks get their settings in ``args`` (a ``--config-json``, not torchrun's own
    options: torchrun's parser pre-scans the forwarded arguments for abbreviations of its options
    and rejects ``--nproc`` as ambiguous, Python 3.11).
    """
    if nproc < 1:
        raise ValueError(f"nproc={nproc}: torchrun needs 1 or more processes")
    return [python, "-m", "ganforge.launch", "--standalone", f"--nproc-per-node={nproc}", "-m", module, *args]


AUTO = "auto"


def visible_gpus() -> int:
    """CUDA devices this process may use (CUDA_VISIBLE_DEVICES applied); 0 without CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_nproc(gpus: int) -> int:
    """``--nproc auto``: one rank per visible GPU; on a CPU-only machine one rank, which takes every free core
    as intra-op threads — CPU ranks would split the same cores and add a gradient all-reduce per step."""
    return gpus if gpus > 0 else 1


def check_nproc(nproc: int, gpus: int, cpus: int, what: str = "--nproc") -> None:
    """Refuse more local ranks than this machine can run, before any process starts.

    With GPUs each rank takes one (NCCL refuses two ranks on one device); without, each CPU rank needs at
    least one core of its own (beyond that they only share the cores, each holding its own copy of torch).
    ``what`` names the setting in the message (``--nproc``, ``train.nproc=``)."""
    from .config import ConfigError

    asked = f"{what}{'' if what.endswith('=') else ' '}{nproc}"
    if gpus > 0 and nproc > gpus:
        raise ConfigError(
            f"{asked} is more than the {gpus} visible GPU(s) of this machine (one rank per GPU); "
            f"use --nproc {gpus} or --nproc auto"
        )
    if gpus == 0 and nproc > cpus:
        raise ConfigError(
            f"{asked} is more than the {cpus} usable CPU core(s) of this machine (no GPU: one rank per core at "
            f"most); use --nproc {cpus} or fewer, or --nproc auto"
        )


def stop_status(exitcodes: set[int]) -> int | None:
    """The status of ranks that stopped on one signal, else None. A rank that exits first (143) makes torchrun
    SIGTERM the others; one still exiting after its own stop then dies of that signal (exit code -15), so a
    rank killed by the stop signal counts as stopped by it."""
    stopped = {128 - code if code < 0 else code for code in exitcodes}
    if len(stopped) == 1 and stopped <= STOP_STATUSES and any(code > 0 for code in exitcodes):
        return stopped.pop()
    return None


def main(argv: list[str] | None = None) -> int:
    """torchrun's ``main`` with the stop statuses described above; any other failure is torchrun's own."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(argv)
    except SignalException as e:
        return 128 + int(e.sigval)
    except ChildFailedError as e:
        status = stop_status({failure.exitcode for failure in e.failures.values()})
        if status is None:
            raise
        return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
