"""Which generator shape at 64 px, latent (VAE f=4 + UNet on 16x16 latents) or pixels (UNet on 64x64x3), in the
same wall time? Judged by the independent judge, never by the selector.

Needs a workspace where the profile's generator chain has run (`bench/chain_times.py generator`): its VAE +
diffusion jobs give the latent arm and the wall time to match, its judge does the judging. The pixel arm is a
train_ldm job with `pixel_space = true`, its steps set so it trains as long as the latent arm's VAE and diffusion
together (from a step time measured here first). Both arms then make the same plain samples — N per class, no
oversampling, the same seeds, guidance and steps — and a score job judges each set.

    python bench/generator_shape.py --workspace WS [--profile cpu64] [--per-class 60] [--classes akiec,bcc,df,vasc]

Run alone on the machine: the step time and the training both are wall-time measurements.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client import Client  # noqa: E402
from engine.labels import CLASSES  # noqa: E402
from engine.launcher import Launcher  # noqa: E402
from engine.models.ldm import LatentDiffusion, UNetConfig, build_unet, new_noise_scheduler  # noqa: E402
from engine.recipes.registry import checked_profile  # noqa: E402
from engine.settings import DEFAULT_HOST, Settings  # noqa: E402

# The pixel arms, as train_ldm parameters. Plain: a UNet on 64x64x3, /16 to a 4x4 bottleneck (the fastest of
# those tried at 64 px, ~60 img/s). Folded: each 4x4 block of pixels one position's 48 channels, so the UNet works
# at 16x16 as the latent one does, wider for the 48 channels (~150 img/s).
PIXEL_ARMS = {
    "pixels, 64x64x3": {"pixel_space": True, "pixel_patch": 1, "channels": [32, 64, 64, 128, 128],
                        "attention": [False, False, False, False, True], "layers_per_block": 1},
    "pixels folded 4x4, 48x16x16": {"pixel_space": True, "pixel_patch": 4, "channels": [96, 192, 192],
                                    "attention": [False, False, True], "layers_per_block": 1},
}


def seconds(job) -> float:
    return (job.finished_at - job.started_at).total_seconds()


def step_seconds(arm: dict, size: int, batch: int) -> float:
    """Wall seconds of one bf16 training step of a pixel arm's UNet, measured on this machine."""
    patch = arm["pixel_patch"]
    unet = build_unet(UNetConfig(tuple(arm["channels"]), arm["layers_per_block"], tuple(arm["attention"])),
                      size // patch, 3 * patch * patch, len(CLASSES))
    model = LatentDiffusion(None, unet, new_noise_scheduler(), len(CLASSES), 1.0, pixel_patch=patch)
    optimizer = torch.optim.AdamW(unet.parameters(), 3e-4)
    x, y = model.encode(torch.randn(batch, 3, size, size)), torch.randint(0, len(CLASSES), (batch,))

    def step() -> None:
        with torch.autocast("cpu", torch.bfloat16):
            loss = model.training_loss(x, y, min_snr_gamma=5.0)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()
    start = time.perf_counter()
    for _ in range(5):
        step()
    return (time.perf_counter() - start) / 5


def sample_and_judge(client: Client, ldm_job: int, per_class: int, classes: list[str],
                     generate: dict) -> tuple[dict, float]:
    """Plain samples (no oversampling) of `classes` from `ldm_job`'s model, judged: the score job's result and
    the generate job's wall seconds."""
    params = {"quotas": dict.fromkeys(classes, per_class), "oversample": 1.0, "seed": 7,
              "guidance": generate["guidance"], "steps": generate["steps"], "batch_size": generate["batch_size"]}
    job = client.submit_job("generate", params, after=[ldm_job])
    done = client.wait_for_job(job.id, timeout=4 * 3600)
    if done.state != "succeeded":
        raise SystemExit(f"generate job {job.id} {done.state}: {done.error}")
    score = next(j for j in client.jobs(kind="score", limit=50).items if j.after == [job.id])
    judged = client.wait_for_job(score.id, timeout=3600)
    if judged.state != "succeeded":
        raise SystemExit(f"score job {score.id} {judged.state}: {judged.error}")
    return judged.result, seconds(done)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workspace", type=Path, required=True)
    parser.add_argument("--profile", default="cpu64")
    parser.add_argument("--per-class", type=int, default=60)
    parser.add_argument("--classes", default="akiec,bcc,df,vasc", help="Default: the classes the profile "
                                                                      "generates for.")
    args = parser.parse_args()
    profile = checked_profile(args.profile)
    classes = args.classes.split(",")
    ldm_params, generate = profile.params("train_ldm"), profile.params("generate")
    settings = Settings.from_env(args.workspace.resolve())
    launcher = Launcher()
    try:
        launcher.start_server(settings, DEFAULT_HOST, 0)
        client = Client.from_settings(settings, timeout=60)
        latent_ldm = client.jobs(kind="train_ldm", state="succeeded", limit=1).items[0]
        vae = client.jobs(kind="train_vae", state="succeeded", limit=1).items[0]
        budget = seconds(vae) + seconds(latent_ldm)
        size = profile.data.image_size
        print(f"latent arm: VAE {seconds(vae) / 60:.1f} min + diffusion {seconds(latent_ldm) / 60:.1f} min "
              f"(jobs {vae.id}, {latent_ldm.id})", flush=True)
        trained = {"latent f=4, 8x16x16": latent_ldm.id}
        for name, arm in PIXEL_ARMS.items():
            steps = max(1, int(budget / step_seconds(arm, size, ldm_params["batch_size"])))
            job = client.submit_job("train_ldm", {**ldm_params, **arm, "image_size": size, "steps": steps,
                                                  "grid_every": steps, "checkpoint_every": 500})
            done = client.wait_for_job(job.id, timeout=6 * 3600)
            if done.state != "succeeded":
                raise SystemExit(f"{name}: train_ldm job {job.id} {done.state}: {done.error}")
            print(f"{name}: {steps} steps, diffusion {seconds(done) / 60:.1f} min (job {job.id})", flush=True)
            trained[name] = job.id
        arms = {name: sample_and_judge(client, job_id, args.per_class, classes, generate)
                for name, job_id in trained.items()}
    finally:
        launcher.stop_all()
    print(f"\n{args.per_class} plain samples per class, guidance {generate['guidance']}, {generate['steps']} steps; "
          "judge's figures (intended-class rate / precision / recall / FD with the real-val floor / C2ST accuracy)")
    for name, (report, took) in arms.items():
        print(f"\n{name}: sampling {args.per_class * len(classes) / took:.2f} img/s")
        print(f"{'class':<6} {'judged':>7} {'ceiling':>8} {'prec':>5} {'rec':>5} {'FD':>7} {'floor':>7} {'C2ST':>5}")
        for cls, row in report["per_class"].items():
            c2st = row.get("c2st") or {}
            print(f"{cls:<6} {row['intended_rate']:>7.2f} {row['real_val_recall']:>8.2f} "
                  f"{row.get('precision', float('nan')):>5.2f} {row.get('recall', float('nan')):>5.2f} "
                  f"{row.get('fd', float('nan')):>7.1f} {row.get('fd_floor', float('nan')):>7.1f} "
                  f"{c2st.get('accuracy', float('nan')):>5.2f}")
        mean = {k: sum(r.get(k, 0) for r in report["per_class"].values()) / len(report["per_class"])
                for k in ("intended_rate", "precision", "recall", "fd")}
        print("mean   " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items()))


if __name__ == "__main__":
    main()
