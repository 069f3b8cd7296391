"""Review speed with 100,000 synthetic images in the database (issue 6: the review page, query + 48 thumbnails,
under 1 s server-side; a decision round trip under 100 ms).

Fills a fresh workspace with N synthetic rows, their six scores each and some decisions, starts a real engine
server on it, then measures, as medians over repeated calls:
  - GET /health                          the floor of any HTTP call (the baseline of this run)
  - GET /reviews/queue (48, my queue)    the review page's query, scores and the caller's decisions joined in
  - GET /images/thumbs (48 ids)          the page's thumbnails in one answer (vs 48 x GET /images/{id}/thumb)
  - POST /reviews                        one decision
  - the Review page itself, rendered by Streamlit's AppTest against that server (query + 48 thumbnails fetched,
    enlarged and laid out): cold (empty image cache) and warm
and prints each with its ratio to the /health round trip.

    python bench/review_speed.py [--images 100000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from engine.client import Client  # noqa: E402
from engine.data.images import ImageStore, check_image  # noqa: E402
from engine.labels import CLASSES  # noqa: E402
from engine.store import Store  # noqa: E402
from tests.factories import image_bytes  # noqa: E402
from tests.processes import start_server  # noqa: E402


def fill(workspace: Path, n: int) -> None:
    """N synthetic rows sharing a few real thumbnail files, six scores each, and decisions on every 10th image."""
    import pyarrow as pa

    store = Store(workspace / "dermae.duckdb")
    images, thumbs = ImageStore(workspace / "images"), ImageStore(workspace / "thumbs")
    image_paths, thumb_paths = [], []
    for k in range(64):
        checked = check_image(image_bytes(k, "PNG", (28, 28)))
        image_paths.append(images.put(checked.content_id, checked.ext, checked.data)[0])
        thumb_paths.append(thumbs.put(checked.content_id, checked.thumbnail_ext, checked.thumbnail)[0])
    rng = np.random.default_rng(0)
    ids = [f"{i:064x}" for i in range(n)]
    start = datetime(2026, 1, 1)
    rows = pa.table({
        "id": ids, "content_id": ids, "path": [image_paths[i % 64] for i in range(n)],
        "thumb_path": [thumb_paths[i % 64] for i in range(n)], "label": [CLASSES[i % 7] for i in range(n)],
        "source": ["synthetic"] * n, "split": pa.array([None] * n, pa.string()),
        "lesion_id": pa.array([None] * n, pa.string()), "width": [28] * n, "height": [28] * n,
        "format": ["PNG"] * n, "size_bytes": [1000] * n, "import_batch": pa.array([None] * n, pa.string()),
        "original_name": ids, "metadata": ["{}"] * n, "duplicate_of": pa.array([None] * n, pa.string()),
        "created_at": [start + timedelta(seconds=i) for i in range(n)], "generation_job": [1 + i // 10_000
                                                                                        for i in range(n)],
        "seed": list(range(n)), "guidance": [10.0] * n, "steps": [20] * n, "checkpoint": ["jobs/1/ldm"] * n})
    with store.db.transaction() as cur:
        cur.register("bench_rows", rows)
        cur.execute("INSERT INTO images BY NAME SELECT * FROM bench_rows")
    names = ("intended_prob", "nearest_real_dist", "near_copy", "dup_group", "sharpness", "predicted_class")
    scores = [{"image_id": i, "name": name, "value": float(rng.random()), "ref": ids[0] if name ==
               "nearest_real_dist" else None} for i in ids for name in names]
    store.images.set_scores(2, scores)
    for reviewer in ("ann", "bob"):
        store.reviews.decide(ids[::10], reviewer, "accept")
    store.close()


def median_ms(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def render_review_page(url: str, name: str, password: str) -> tuple[float, float]:
    from streamlit.testing.v1 import AppTest

    os.environ["DERMAE_API_URL"] = url
    at = AppTest.from_file(str(ROOT / "studio" / "app.py"), default_timeout=120).run()
    at.text_input(key="sign_in_name").input(name)
    at.text_input(key="sign_in_password").input(password)
    at.button[0].click().run()
    start = time.perf_counter()
    at.switch_page("pages/review.py").run()
    cold = time.perf_counter() - start
    assert not at.exception, at.exception
    start = time.perf_counter()
    at.run()
    warm = time.perf_counter() - start
    return cold * 1000, warm * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        t0 = time.perf_counter()
        fill(workspace, args.images)
        print(f"filled {args.images:,} synthetic images (+ {6 * args.images:,} scores, "
              f"{args.images // 5:,} decisions) in {time.perf_counter() - t0:.1f}s")
        server = start_server(workspace)
        try:
            server.client().add_user("ann", "ann-password", "reviewer")
            ann = Client(server.url, None)
            ann.login("ann", "ann-password")
            health = median_ms(ann.health, args.repeat)
            page = ann.review_queue(label="df", mine=True, limit=48)
            query = median_ms(lambda: ann.review_queue(label="df", mine=True, limit=48), args.repeat)
            filtered = median_ms(lambda: ann.review_queue(label="df", mine=True, min_intended=0.5,
                                                          sort="-intended_prob", limit=48), args.repeat)
            ids = [i.id for i in page.items]
            thumbs = median_ms(lambda: ann.thumbnails(ids), args.repeat)
            one_by_one = median_ms(lambda: [ann.image_bytes(i, thumbnail=True) for i in ids], args.repeat)
            targets = iter(ann.review_queue(label="vasc", mine=True, limit=args.repeat).items)
            decide = median_ms(lambda: ann.decide([next(targets).id], "accept"), args.repeat)
            cold, warm = render_review_page(server.url, "ann", "ann-password")
        finally:
            server.stop()
    print(f"\n{'what':<52} {'median ms':>10} {'x /health':>10}")
    rows = (("GET /health (baseline)", health), ("review queue, 48 of my queue", query),
            ("review queue, filtered + sorted by score", filtered),
            ("48 thumbnails, one request (what the studio does)", thumbs),
            ("48 thumbnails, one request each", one_by_one), ("query + 48 thumbnails", query + thumbs),
            ("one decision (POST /reviews)", decide), ("Review page render, cold image cache (AppTest)", cold),
            ("Review page render, warm (AppTest)", warm))
    for what, ms in rows:
        print(f"{what:<52} {ms:>10.1f} {ms / health:>10.1f}")
    print(f"\ntargets: page under 1000 ms -> {'met' if max(cold, query + thumbs) < 1000 else 'NOT met'}; "
          f"decision under 100 ms -> {'met' if decide < 100 else 'NOT met'}")


if __name__ == "__main__":
    main()
