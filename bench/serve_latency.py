"""Serving latency of the demo's student at batch 1, as ratios against eager fp32 PyTorch measured in the same run:
eager fp32, channels_last + bf16 autocast, TorchScript (as exported, and frozen with optimize_for_inference),
ONNX Runtime — the same weights, exported through the export job's own function. Then end-to-end p50/p95 of a
request through gradio_client against a launched demo (upload -> answer with heatmap), which is what a user waits
for. Figures, not assertions: they are noisy (±2x between runs), the ratios less so.

    python bench/serve_latency.py [--arch efficientnet_b0 --image-size 224 64 --runs 100 --requests 30 --threads 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.labels import CLASSES  # noqa: E402
from engine.models.classifier import build_classifier  # noqa: E402
from engine.recipes.export import export_for_serving  # noqa: E402


def timed(fn: Callable[[], object], runs: int, warmup: int = 10) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000)
    return times


def interleaved(paths: dict[str, Callable[[], object]], runs: int, warmup: int = 10) -> dict[str, list[float]]:
    """Each path once per round, `runs` rounds: a burst of load from other processes then slows every path
    alike, so the ratios stay fair where absolute figures do not."""
    for fn in paths.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in paths}
    for _ in range(runs):
        for name, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000)
    return times


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def model_latencies(model: torch.nn.Module, folder: Path, size: int, runs: int, threads: int) -> dict[str, list]:
    import copy

    import onnxruntime as ort

    torch.set_num_threads(threads)
    x = torch.rand(1, 3, size, size) * 2 - 1
    fast = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x_cl = x.to(memory_format=torch.channels_last)
    scripted = torch.jit.load(str(folder / "model.torchscript.pt")).eval()
    frozen = torch.jit.optimize_for_inference(torch.jit.load(str(folder / "model.torchscript.pt")).eval())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    feed = {"image": x.numpy()}

    def bf16() -> object:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fast(x_cl)

    with torch.inference_mode():
        return interleaved({
            "eager fp32": lambda: model(x),
            "channels_last + bf16 autocast": bf16,
            "TorchScript (as exported)": lambda: scripted(x),
            "TorchScript (optimize_for_inference)": lambda: frozen(x),
            "ONNX Runtime": lambda: session.run(None, feed),
        }, runs)


def end_to_end(folder: Path, image: Path, requests: int, runtime: str) -> list[float]:
    from gradio_client import Client, handle_file

    from engine.launcher import Launcher

    launcher = Launcher()
    try:
        url = launcher.start_demo("127.0.0.1", 0, model=folder, args=["--runtime", runtime])
        client = Client(url, verbose=False, analytics_enabled=False)
        call = lambda: client.predict(handle_file(str(image)), api_name="/classify")  # noqa: E731
        return timed(call, requests, warmup=3)
    finally:
        launcher.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="efficientnet_b0")
    parser.add_argument("--image-size", type=int, nargs="+", default=[224, 64])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--requests", type=int, default=30, help="End-to-end requests per runtime (0: skip).")
    parser.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    args = parser.parse_args()

    from engine.data.images import encode_png
    from engine.data.phantom import render_lesion

    print(f"{args.arch}, batch 1, {args.threads} threads, median / p95 of {args.runs} runs; ratio = eager fp32 "
          "median / this median (higher is faster)")
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "lesion.png"
        image.write_bytes(encode_png(render_lesion("mel", np.random.default_rng(0))))
        for size in args.image_size:
            torch.manual_seed(0)
            model = build_classifier(args.arch, len(CLASSES), size).eval()
            folder = Path(tmp) / f"export-{size}"
            meta = {"arch": args.arch, "image_size": size, "kwargs": {}, "classes": list(CLASSES),
                    "dataset": "bench (random weights)"}
            export_for_serving(model, meta, folder, torch.rand(4, 3, size, size) * 2 - 1, None, None)
            results = model_latencies(model, folder, size, args.runs, args.threads)
            base = statistics.median(results["eager fp32"])
            print(f"\n{size}x{size} px")
            print("| path | median ms | p95 ms | speed-up vs eager fp32 |\n| --- | ---: | ---: | ---: |")
            for name, times in results.items():
                median = statistics.median(times)
                print(f"| {name} | {median:.2f} | {percentile(times, 95):.2f} | {base / median:.2f}x |")
            for runtime in ("onnx", "torchscript") if args.requests else ():
                times = end_to_end(folder, image, args.requests, runtime)
                print(f"| end to end through gradio_client ({runtime}; upload, checks, answer, heatmap) | "
                      f"{statistics.median(times):.1f} | {percentile(times, 95):.1f} | (p50 / p95 of "
                      f"{args.requests} requests) |")


if __name__ == "__main__":
    main()
