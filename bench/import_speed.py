"""Import speed of DermaMNIST (10,015 images, thumbnails included) through a real engine server.

Prints the wall time of `POST /imports` and, as the baseline measured in the same run, the time of the bare
minimum any importer must do for the same images: encode each as PNG and write it to disk (no validation, no
thumbnail, no database). Target (issue 2): the import under 60 s on 2 cores.

    python bench/import_speed.py [--data ../shared/data/dermamnist.npz]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.data.images import encode_png  # noqa: E402
from tests.processes import start_server  # noqa: E402


def bare_write(npz: Path, out: Path) -> float:
    data = np.load(npz)
    start = time.perf_counter()
    for split in ("train", "val", "test"):
        for i, pixels in enumerate(data[f"{split}_images"]):
            (out / f"{split}_{i}.png").write_bytes(encode_png(pixels))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "dermamnist.npz")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"no DermaMNIST at {args.data}: pass --data PATH/dermamnist.npz")
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "ws")
        try:
            with server.client() as client:
                start = time.perf_counter()
                result = client.import_data("medmnist", str(args.data))
                import_s = time.perf_counter() - start
                start = time.perf_counter()
                again = client.import_data("medmnist", str(args.data))
                reimport_s = time.perf_counter() - start
        finally:
            server.stop()
        (Path(tmp) / "bare").mkdir()
        bare_s = bare_write(args.data, Path(tmp) / "bare")
    n = result.n_added
    print(f"{'what':<44}{'seconds':>9}{'images/s':>10}{'ratio':>8}")
    print(f"{'baseline: PNG encode + write only':<44}{bare_s:>9.2f}{n / bare_s:>10.0f}{1:>8.2f}")
    print(f"{'import (validate, hash, thumbnail, DB)':<44}{import_s:>9.2f}{n / import_s:>10.0f}"
          f"{import_s / bare_s:>8.2f}")
    print(f"{'re-import (adds ' + str(again.n_added) + ')':<44}{reimport_s:>9.2f}{n / reimport_s:>10.0f}"
          f"{reimport_s / bare_s:>8.2f}")
    print(f"\n{n} images imported; target under 60 s: {'met' if import_s < 60 else 'NOT met'} ({import_s:.1f} s)")


if __name__ == "__main__":
    main()
