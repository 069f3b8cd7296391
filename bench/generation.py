"""Generation throughput and quality, measured in one run.

1. Speed: images/s of batched classifier-free guidance (conditional and null-class passes in ONE forward of
   batch 2B per step) against the baseline loop a diffusers example script would give, per image and two
   forwards per step — same model, same steps. Printed as a ratio.
2. Steps vs quality (needs a workspace where the generator chain ran): in the independent judge's eyes — never
   the selector's — Fréchet distance to the real train split in its feature space (not Inception: no
   downloadable weights here), its intended-class rate and k-NN recall, for several step counts and guidance
   scales; and per class, what the selector's oversampling buys in the judge's eyes.

    python bench/generation.py                       # speed only, on an untrained tiny-profile model
    python bench/generation.py --workspace WS        # + the quality table, from WS's newest ldm + reference
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine import metrics  # noqa: E402
from engine.labels import CLASSES  # noqa: E402
from engine.models.classifier import load_reference, predict  # noqa: E402
from engine.models.ldm import (  # noqa: E402
    LatentDiffusion,
    UNetConfig,
    VAEConfig,
    build_unet,
    build_vae,
    dpm_solver,
    load_generator,
    new_noise_scheduler,
)


@torch.no_grad()
def two_pass_per_image(model: LatentDiffusion, label: int, guidance: float, steps: int, seed: int) -> torch.Tensor:
    """The baseline: one image at a time, a conditional and an unconditional forward per step."""
    scheduler = dpm_solver(model.noise_scheduler.config)
    scheduler.set_timesteps(steps)
    cfg = model.unet.config
    latents = torch.randn((1, cfg.in_channels, cfg.sample_size, cfg.sample_size),
                          generator=torch.Generator().manual_seed(seed))
    cond, null = torch.tensor([label]), torch.tensor([model.null_class])
    for t in scheduler.timesteps:
        eps_c = model.unet(latents, t, class_labels=cond).sample
        eps_u = model.unet(latents, t, class_labels=null).sample
        latents = scheduler.step(eps_u + guidance * (eps_c - eps_u), t, latents).prev_sample
    return model.decode(latents)


def newest(workspace: Path, name: str) -> Path | None:
    found = sorted(workspace.glob(f"jobs/*/artifacts/{name}"), key=lambda p: int(p.parts[-3]))
    return found[-1] if found else None


def speed(model: LatentDiffusion, n: int, steps: int, batch: int) -> None:
    labels = torch.arange(n) % len(CLASSES)
    start = time.perf_counter()
    for i in range(0, n, batch):
        model.sample(labels[i:i + batch], 3.0, steps, seeds=list(range(i, min(n, i + batch))))
    batched = n / (time.perf_counter() - start)
    start = time.perf_counter()
    for i in range(n):
        two_pass_per_image(model, int(labels[i]), 3.0, steps, i)
    baseline = n / (time.perf_counter() - start)
    print(f"\n{'generation, ' + str(steps) + ' DPM-Solver++ steps, CFG 3':<52}{'images/s':>10}{'ratio':>8}")
    print(f"{'baseline: per image, two forwards per step':<52}{baseline:>10.2f}{1:>8.2f}")
    print(f"{'batched CFG (batch ' + str(batch) + ', one forward of 2B per step)':<52}{batched:>10.2f}"
          f"{batched / baseline:>8.2f}")


def real_train(workspace: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The real train split at `size` px and its labels, read through the workspace's engine (started here if not
    running)."""
    from engine.client import Client, ServerNotFound
    from engine.data.tensors import labels_of, load_array
    from engine.settings import Settings

    server = None
    try:
        client = Client.from_settings(Settings.from_env(workspace))
        client.health()
    except ServerNotFound:
        from tests.processes import start_server

        server = start_server(workspace)
        client = server.client()
    try:
        items = [m.model_dump() for m in client.manifest(source="real", split="train")]
    finally:
        if server:
            server.stop()
    return load_array(workspace, items, size), labels_of(items)


def judge_features(workspace: Path) -> tuple[torch.nn.Module, dict, np.ndarray, np.ndarray]:
    """The newest judge, its record, and its features and labels of the real train split. The judge reports;
    the reference classifier only selects (as in generate), so no figure here is the selector grading itself."""
    from engine.data.tensors import to_model_input

    judge_dir = newest(workspace, "judge")
    if judge_dir is None:
        raise SystemExit(f"no judge in {workspace}: run the generator chain (it trains one) or `dermae submit "
                         "train_judge`")
    judge, meta = load_reference(judge_dir)
    images, labels = real_train(workspace, meta["image_size"])
    return judge, meta, predict(judge, to_model_input(images))[1].numpy(), labels


def quality(model: LatentDiffusion, workspace: Path, per_class: int) -> None:
    judge, _, real_feats, real_labels = judge_features(workspace)
    print(f"\nsteps vs quality, {per_class} plain images per class, in the judge's eyes. FD: all classes pooled "
          "against all real train images, in its feature space (not Inception: no downloadable weights here); "
          "intended: its intended-class rate; recall: mean over classes of k-NN recall against the class's real "
          "train images, at matched sizes (diversity).")
    print(f"{'steps':>6}{'guidance':>10}{'FD':>10}{'intended':>10}{'recall':>8}{'s/image':>10}")
    labels = torch.arange(len(CLASSES)).repeat_interleave(per_class)
    for steps in (10, 20, 40):
        for guidance in (1.0, 3.0, 5.0, 10.0):
            start = time.perf_counter()
            images = torch.cat([model.sample(labels[i:i + 64], guidance, steps,
                                             seeds=list(range(i, min(len(labels), i + 64))))
                                for i in range(0, len(labels), 64)])
            seconds = (time.perf_counter() - start) / len(labels)
            probs, feats = predict(judge, images.float() / 127.5 - 1)
            feats = feats.numpy()
            fd = metrics.frechet_distance(real_feats, feats)
            intended = (probs.argmax(1) == labels).float().mean().item()
            recall = np.mean([metrics.matched_size(real_feats[real_labels == k], feats[labels.numpy() == k],
                                                   metrics.precision_recall)[1] for k in range(len(CLASSES))])
            print(f"{steps:>6}{guidance:>10.1f}{fd:>10.2f}{intended:>10.3f}{recall:>8.3f}{seconds:>10.3f}",
                  flush=True)


def fidelity(model: LatentDiffusion, reference_dir: Path, workspace: Path, per_class: int, guidance: float,
             steps: int, oversample: int) -> None:
    """Per class, in the judge's eyes: its intended-class rate for generated images — plain, and keeping the best
    1/oversample of each batch as the generate job does, ranked by the reference classifier's intended-class
    probability alone or weighted by realism (its default) — next to its recall on real val images of the class
    (the ceiling); and each set's Fréchet distance to the real train images of the class."""
    from engine.data.tensors import to_model_input

    judge, judge_meta, real_feats, real_labels = judge_features(workspace)
    reference, meta = load_reference(reference_dir)
    real_images, ref_labels = real_train(workspace, meta["image_size"])
    _, ref_feats = predict(reference, to_model_input(real_images))
    ref_feats = ref_feats.numpy()
    print(f"\nclass fidelity, {per_class} kept images per class, guidance {guidance}, {steps} steps, best 1 of "
          f"{oversample} by the selector. rate: the judge's intended-class rate; FD: to the class's real train "
          "images, judge features")
    print(f"{'class':<7}{'ceiling':>9}{'plain rate':>11}{'FD':>7}{'by prob':>9}{'FD':>7}{'x realism':>10}{'FD':>7}"
          f"{'bar met':>9}")
    for k, cls in enumerate(CLASSES):
        n = oversample * per_class
        seeds = list(range(k * 10_000, k * 10_000 + n))
        images = torch.cat([model.sample(torch.full((len(seeds[i:i + 64]),), k), guidance, steps,
                                         seeds=seeds[i:i + 64]) for i in range(0, n, 64)])
        x = images.float() / 127.5 - 1
        selector_probs, selector_feats = predict(reference, x)
        judge_probs, feats = predict(judge, x)
        feats, real_k = feats.numpy(), real_feats[real_labels == k]
        by_prob = selector_probs[:, k].numpy()
        by_realism = by_prob * np.minimum(1.0, metrics.sample_density(ref_feats[ref_labels == k],
                                                                      selector_feats.numpy(), 3))
        figures = []
        for chosen in (np.arange(per_class), _best(by_prob, oversample, per_class),
                       _best(by_realism, oversample, per_class)):
            figures += [float((judge_probs[chosen].argmax(1) == k).float().mean()),
                        metrics.frechet_distance(real_k, feats[chosen])]
        plain, plain_fd, prob, prob_fd, realism, realism_fd = figures
        ceiling = judge_meta["val_recall"][cls]
        print(f"{cls:<7}{ceiling:>9.2f}{plain:>11.2f}{plain_fd:>7.1f}{prob:>9.2f}{prob_fd:>7.1f}{realism:>10.2f}"
              f"{realism_fd:>7.1f}{'yes' if realism >= 0.8 * ceiling else 'no':>9}", flush=True)


def _best(score: np.ndarray, oversample: int, kept: int, batch: int = 32) -> np.ndarray:
    """As the generate job: batches of up to `batch` kept images, each the best of oversample x as many
    candidates by `score`, until `kept` are kept."""
    chosen, start = [], 0
    while len(chosen) < kept:
        keep = min(batch, kept - len(chosen))
        window = score[start:start + keep * oversample]
        chosen += (start + np.argsort(-window, kind="stable")[:keep]).tolist()
        start += keep * oversample
    return np.array(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, help="A workspace where the generator chain has run.")
    parser.add_argument("--n", type=int, default=28, help="Images for the speed comparison.")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=28)
    parser.add_argument("--per-class", type=int, default=40)
    parser.add_argument("--guidance", type=float, default=3.0, help="For the fidelity table.")
    parser.add_argument("--oversample", type=int, default=2, help="For the fidelity table.")
    parser.add_argument("--no-quality", action="store_true", help="Skip the steps x guidance table.")
    args = parser.parse_args()
    torch.manual_seed(0)
    model_dir = newest(args.workspace, "ldm") if args.workspace else None
    if model_dir:
        model = load_generator(model_dir).eval()
        print(f"model: {model_dir}")
    else:  # speed does not depend on the weights: an untrained model of the tiny profile's shape
        vae = build_vae(VAEConfig((32, 64)), 32)
        unet = build_unet(UNetConfig((64, 128, 128), 1, (False, False, True)), 16, 4, len(CLASSES))
        model = LatentDiffusion(vae, unet, new_noise_scheduler(), len(CLASSES), 1.0).eval()
        print("model: untrained, tiny-profile shape (speed only)")
    speed(model, args.n, args.steps, args.batch)
    reference_dir = newest(args.workspace, "reference") if args.workspace else None
    if model_dir and reference_dir:
        fidelity(model, reference_dir, args.workspace, args.per_class, args.guidance, args.steps, args.oversample)
        if not args.no_quality:
            quality(model, args.workspace, args.per_class)


if __name__ == "__main__":
    main()
