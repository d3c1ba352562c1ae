"""Run under torchrun by tests/test_train.py: train, then check all ranks hold identical weights.

Rank 0 writes a JSON report: the logged (step, loss_d, loss_g) curve and the largest
difference between any rank's parameters and rank 0's. A cyclegan config trains on two domains,
given as DOMAIN_A,DOMAIN_B; its curve logs (step, loss_d_a, loss_g).
"""

import json
import sys

import torch
import torch.distributed as dist

from ganforge.config import PipelineConfig
from ganforge.train import init_distributed, train

cfg = PipelineConfig.from_json(open(sys.argv[1]).read())
data_dir, out_dir, report = sys.argv[2], sys.argv[3], sys.argv[4]
info = init_distributed()
curve = []
cyclegan = cfg.model.arch == "cyclegan"
data = tuple(data_dir.split(",")) if cyclegan else data_dir
loss_d = "loss_d_a" if cyclegan else "loss_d"
result = train(
    cfg, data, out_dir, on_metrics=lambda step, m: curve.append([step, m[loss_d], m["loss_g"]]), dist_info=info
)
flat = torch.cat([p.detach().flatten() for name in sorted(result.models) for p in result.models[name].parameters()])
gathered = [flat]
if info.world_size > 1:
    gathered = [torch.empty_like(flat) for _ in range(info.world_size)]
    dist.all_gather(gathered, flat)
if info.is_main:
    max_diff = max((g - gathered[0]).abs().max().item() for g in gathered)
    json.dump({"world_size": info.world_size, "max_rank_param_diff": max_diff, "curve": curve}, open(report, "w"))
if dist.is_initialized():
    dist.destroy_process_group()
