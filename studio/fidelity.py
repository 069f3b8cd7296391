"""The independent judge's report on a generated set, class by class against the bars: what the Overview shows.

The numbers come from the newest score job of a generate job (its result holds the judge's per-class report);
the near-copies among accepted images are counted live, since review goes on after scoring.
"""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from engine.client import Client
from engine.labels import CLASSES
from studio import api

PASS, FAIL = "✅", "❌"


def newest_judged(client: Client) -> dict | None:
    """The result of the newest succeeded score job that carries a judge's per-class report of a generate job's
    images (preview images, made part way through diffusion training, are not the generator's final word)."""
    scores = api.call(client.jobs, kind="score", state="succeeded", limit=50)
    generate = api.call(client.jobs, kind="generate", limit=500)
    generate_ids = {j.id for j in generate.items} if generate else set()
    for job in scores.items if scores else []:
        result = job.result if isinstance(job.result, dict) else {}
        if result.get("per_class") and result.get("generation_job") in generate_ids:
            return result | {"score_job": job.id}
    return None


def rows(report: dict, accepted_near_copies: dict[str, int]) -> list[dict]:
    """One table row per judged class: each figure beside its bar, and whether the bar is met."""
    out = []
    for cls, row in report["per_class"].items():
        bars = row.get("bars", {})
        c2st = row.get("c2st") or {}
        out.append({
            "class": cls, "images": row["n"],
            "judge intended-class rate": f"{row['intended_rate']:.2f} {PASS if bars.get('intended_rate') else FAIL}",
            "its real-val recall (ceiling)": f"{row['real_val_recall']:.2f}",
            "precision (real vs real)": _figure(row.get("precision"), bars.get("precision"),
                                                row.get("real_vs_real", {}).get("precision")),
            "recall (real vs real)": _figure(row.get("recall"), bars.get("recall"),
                                             row.get("real_vs_real", {}).get("recall")),
            "FD (floor)": f"{row['fd']:.1f} ({row['fd_floor']:.1f}) at n={row['fd_at_n']}" if "fd" in row else "–",
            "near-copies (accepted)": f"{row['near_copies']} ({accepted_near_copies.get(cls, 0)}) "
                                      f"{PASS if not accepted_near_copies.get(cls) else FAIL}",
            "real vs synthetic told apart": f"{c2st['accuracy']:.2f} [{c2st['ci95'][0]:.2f}, {c2st['ci95'][1]:.2f}] "
                                            f"n={c2st['n_per_side']}+{c2st['n_per_side']}" if c2st else "–",
        })
    return out


def _figure(value: float | None, met: bool | None, real: float | None = None) -> str:
    """A figure, whether it meets its bar, and what two real samples of the class score (where there are enough)."""
    if value is None:
        return "–"
    return f"{value:.2f} {PASS if met else FAIL}" + (f" ({real:.2f})" if real is not None else "")


def show_judge_report(client: Client) -> None:
    st.subheader("Generator fidelity, by an independent judge")
    report = newest_judged(client)
    if report is None:
        st.caption("No generated set has been judged yet: the generator chain's score job reports here once "
                   "generation ends.")
        return
    accepted = api.call(client.review_queue, status="accepted", near_copy=True, limit=500)
    near_copies = {c: sum(i.label == c for i in accepted.items) for c in CLASSES} if accepted else {}
    st.caption(f"Generate job {report['generation_job']}, judged by score job {report['score_job']}: a "
               f"{report['judge_arch']} trained on real train images only (real-val macro-F1 "
               f"{report.get('judge_val_macro_f1') or 0:.2f}), never used to select images — the selector is a "
               f"separate {report['selector']}. Bars: intended-class rate {report['bars']['intended_rate']}, "
               f"precision {report['bars']['precision']}, recall {report['bars']['recall']}, near-copies "
               f"{report['bars']['near_copies']}. In brackets beside precision and recall: what real val "
               "scores against the judge's held-out real images, as far as the few images allow. Told apart: a "
               "small classifier's accuracy at telling synthetic from held-out real images (0.5: it cannot). "
               + report["note"])
    st.dataframe(rows(report, near_copies), hide_index=True, width="stretch")
    judged = list(report["per_class"])
    figure = go.Figure([
        go.Bar(name="judge intended-class rate", x=judged, y=[report["per_class"][c]["intended_rate"] for c in judged],
               marker_color="#e07a5f"),
        go.Bar(name="judge's recall on real val (ceiling)", x=judged,
               y=[report["per_class"][c]["real_val_recall"] for c in judged], marker_color="#8c6d62"),
    ])
    figure.add_scatter(x=judged, y=[0.8 * report["per_class"][c]["real_val_recall"] for c in judged],
                       mode="markers", name="bar: 0.8 × ceiling",
                       marker={"symbol": "line-ew-open", "size": 28, "color": "#3d405b", "line": {"width": 3}})
    figure.update_layout(barmode="group", height=320, margin={"t": 30, "b": 10}, yaxis_range=[0, 1],
                         title="Does each class come out as itself?", yaxis_title="share of images")
    st.plotly_chart(figure, width="stretch")
