"""What a model costs: parameters, FLOPs and batch-1 CPU latency (eager fp32, and channels_last + bf16)."""

from __future__ import annotations

import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_flops(model: torch.nn.Module, image_size: int) -> int:
    """FLOPs of one forward at batch 1 (a multiply-add counts 2), by torch's own FLOP counter."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.zeros(1, 3, image_size, image_size))
    return int(counter.get_total_flops())


@torch.no_grad()
def latency_ms(model: torch.nn.Module, image_size: int, runs: int = 30, fast: bool = False) -> float:
    """Median batch-1 latency in ms; `fast` = channels_last memory and bf16 autocast (AVX-512 bf16 CPUs)."""
    x = torch.rand(1, 3, image_size, image_size)
    if fast:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=fast)
    times = []
    with autocast:
        for i in range(runs + 5):
            start = time.perf_counter()
            model(x)
            if i >= 5:  # warm-up first
                times.append((time.perf_counter() - start) * 1000)
    if fast:
        model.to(memory_format=torch.contiguous_format)
    return statistics.median(times)
