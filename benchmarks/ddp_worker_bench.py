"""Run under torchrun by benchmarks/run.py: train a fixed number of steps, write rank 0's img/s as JSON.

Throughput is taken between the first and the last logged step (``log_every`` = the warm-up),
so process start, model building and the first steps are not counted, nor the final sample
grid and checkpoint (written after the last log). Usage:
``torchrun --standalone --nproc-per-node=N ddp_worker_bench.py CONFIG_JSON DATA_DIR OUT_DIR REPORT_JSON``
"""

from __future__ import annotations

import json
import sys
import time

import torch
import torch.distributed as dist

from ganforge.config import PipelineConfig
from ganforge.fileio import atomic_write_text
from ganforge.train import init_distributed, train


def main(config_json: str, data_dir: str, out_dir: str, report: str) -> None:
    """Train cfg for its max_steps on the ranks torchrun started; rank 0 writes the report."""
    cfg = PipelineConfig.from_json(open(config_json).read())
    info = init_distributed()
    logged: list[tuple[int, float]] = []
    train(
        cfg, data_dir, out_dir, on_metrics=lambda step, _m: logged.append((step, time.perf_counter())), dist_info=info
    )
    if info.is_main:
        (first_step, t_first), (last_step, t_last) = logged[0], logged[-1]
        img_per_s = (last_step - first_step) * cfg.train.batch_size * cfg.train.n_critic / (t_last - t_first)
        atomic_write_text(
            report,
            json.dumps(
                {
                    "world_size": info.world_size,
                    "img_per_s": img_per_s,
                    "timed_steps": last_step - first_step,
                    "threads_per_rank": torch.get_num_threads(),
                }
            ),
        )
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:5])
