"""``report.html``: one self-contained page per evaluation or sweep, to look at rather than read.

``write_evaluation_report`` (``wmplan-plan``, beside ``results.json``) shows the summary
numbers, plots (final distance histogram, success and distance against env steps), the
episode videos and a per-episode table; ``write_sweep_report`` (``wmplan-sweep``, beside
``sweep.md``) the sweep's table and plot, with links to each cell's own plan report.
Plots are PNG files next to the page; every link is relative, so the folder can be moved.
Everything is written atomically (``wmplan.atomic``).
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence
from urllib.parse import quote

import numpy as np

from wmplan.atomic import atomic_path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
tr.success td { background: #e8f6e8; } tr.failure td { background: #fbeaea; }
.row { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 13px; color: #555; }
img, video { max-width: 100%; }
"""


class Html(str):
    """A table cell that is already HTML (a link), not text to escape."""


# -- building blocks ------------------------------------------------------------------------
def link(path: Path, page: Path) -> str:
    """``path`` relative to the page's folder, as a URL."""
    return quote(Path(os.path.relpath(path, page.parent)).as_posix())


def cell(value: Any) -> str:
    if isinstance(value, Html):
        return value
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def anchor(path: Path | None, page: Path, text: str) -> Html | None:
    """A link to ``path`` where it exists."""
    return Html(f'<a href="{link(path, page)}">{html.escape(text)}</a>') if path is not None and path.exists() else None


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str],
          row_class: Callable[[Mapping], str] = lambda row: "") -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join(f'<tr class="{row_class(r)}">' + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>\n"
                   for r in rows)
    return f"<table><tr>{head}</tr>\n{body}</table>"


def media(path: Path, page: Path) -> str:
    """A video (<img> for GIFs, <video> for MP4) or a plot, with its name under it."""
    src = link(path, page)
    tag = (f'<video src="{src}" controls autoplay loop muted></video>' if path.suffix == ".mp4"
           else f'<img src="{src}" alt="{html.escape(path.name)}">')
    return f"<figure>{tag}<figcaption>{html.escape(path.stem)}</figcaption></figure>"


def write_page(path: Path, title: str, body: str) -> Path:
    page = (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head>\n<body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")
    with atomic_path(path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return path


def save_plot(path: Path, draw: Callable[[Any], None]) -> Path:
    """One PNG plot, drawn by ``draw(axes)`` on a figure of its own (no pyplot state: the Agg canvas)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.5))
    draw(fig.subplots())
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path


# -- an evaluation ------------------------------------------------------------------------
def evaluation_plots(page: Path, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Final distance histogram, success and distance per env step; files ``<page stem>_*.png``."""
    final = np.array([r["final_distance"] for r in records])
    won = np.array([r["success"] for r in records])
    at_goal = np.array([r["successes"] for r in records], dtype=float)  # [episodes, env steps]
    distances = np.array([r["distances"] for r in records])
    steps = np.arange(1, at_goal.shape[1] + 1)

    def histogram(ax):
        ax.hist([final[won], final[~won]], bins=min(20, max(5, len(final))), stacked=True,
                color=["tab:green", "tab:red"], label=["success", "failure"])
        ax.set(xlabel="final distance to the goal", ylabel="episodes", title="where the episodes ended")
        ax.yaxis.get_major_locator().set_params(integer=True)  # episodes are counted
        ax.legend(fontsize=8)

    def success_curve(ax):
        ax.plot(steps, at_goal.mean(0), label="at the goal")
        ax.plot(steps, np.maximum.accumulate(at_goal, axis=1).mean(0), "--", label="reached by then")
        ax.set(ylim=(0, 1.05), xlabel="env step", ylabel="fraction of episodes", title="success over the episode")
        ax.legend(fontsize=8)

    def distance_curve(ax):
        ax.plot(steps, distances.T, color="tab:blue", alpha=0.3, linewidth=0.8)
        ax.plot(steps, np.median(distances, 0), color="black", label="median")
        ax.set(xlabel="env step", ylabel="distance to the goal", title="distance over the episode")
        ax.legend(fontsize=8)

    return [save_plot(page.with_name(f"{page.stem}_{name}.png"), draw) for name, draw in
            (("final_distance", histogram), ("success_curve", success_curve), ("distance_curve", distance_curve))]


def write_evaluation_report(path: str | os.PathLike, results: Mapping[str, Any],
                            videos: Mapping[int, Path] | None = None) -> Path:
    """``path`` (report.html) for a results dict (``write_results``), with ``videos``
    ({episode id: file of ``save_videos``}) shown and linked from their episode's row."""
    page = Path(path)
    config, records = results.get("config", {}), results["records"]
    videos = videos or {}
    ci = results["success_ci95"]
    summary = {
        "env": config.get("env", {}).get("name"), "world model": config.get("world_model"),
        "planner": config.get("planner", {}).get("name"), "episodes": results["episodes"],
        "success (at the end)": f"{results['success_rate']:.2f} [95% CI {ci[0]:.2f}-{ci[1]:.2f}]",
        "success (any step)": results["success_rate_any"], "mean final distance": results["mean_final_distance"],
        "mean min distance": results["mean_min_distance"], "replans": results["replans"],
        "s/replan (mean, max)": f"{results['plan_time_mean_s']:.3g}, {results['plan_time_max_s']:.3g}",
        "checkpoint sha256": ((results.get("checkpoint") or {}).get("sha256") or "-")[:16],
    }
    rows = [{"episode": r["episode"], "success": r["success"], "reached the goal": r["success_any"],
             "final distance": r["final_distance"], "min distance": r["min_distance"], "env steps": r["steps"],
             "video": anchor(videos.get(r["episode"]), page, "video")} for r in records]
    plots = evaluation_plots(page, records)
    body = (table([{"": k, "value": v} for k, v in summary.items()], ["", "value"])
            + "<h2>Plots</h2><div class=\"row\">" + "".join(media(p, page) for p in plots) + "</div>"
            + ("<h2>Episodes</h2><p>executed | predicted by the world model (where it decodes) | goal</p>"
               "<div class=\"row\">" + "".join(media(v, page) for v in videos.values()) + "</div>" if videos else "")
            + "<h2>Per episode</h2>"
            + table(rows, list(rows[0]), lambda r: "success" if r["success"] else "failure"))
    title = f"{summary['env'] or 'plan'}: {Path(str(summary['world model'])).name} ({results['episodes']} episodes)"
    return write_page(page, title, body)


# -- a sweep --------------------------------------------------------------------------------
def cell_setting(cell: Mapping[str, Any]) -> str:
    """What sets a cell apart: its codec (and whether it plans with the codec's own predictor),
    weight transfer, training overrides, sampler fields and planning overrides."""
    parts = [f"codec={cell['codec']}"] if cell.get("codec") else []
    parts += ["world_model=codec (its own predictor)"] if cell.get("world_model") == "codec" else []
    parts += [f"init={cell['init']}"] if cell.get("init") else []
    parts += list(cell["train"]) + [f"sampler.{k}={v}" for k, v in (cell.get("sampler") or {}).items()]
    parts += [f"plan: {o}" for o in cell.get("plan_overrides") or []]
    return " ".join(parts) or "(recipe)"


SWEEP_COLUMNS = ("cell", "setting", "success", "success_ci95", "final_distance", "s_per_replan", "psnr",
                 "copy_last_psnr", "codec_psnr", "psnr_last_step", "rf_fvd", "copy_last_rf_fvd", "latent_mse_true", "latent_mse_zero",
                 "latent_mse_random", "tracking_rmse", "stay_rmse", "plan report")


def write_sweep_report(out_dir: str | os.PathLike, cells: Sequence[Mapping[str, Any]],
                       rows: Sequence[Mapping[str, Any]], baselines: Mapping[str, Mapping[str, Any]],
                       finding: str = "") -> Path:
    """``out_dir/report.html``: the sweep's table (``sweep.report_row`` rows and the baselines),
    ``sweep.png``, and a link to each cell's plan report."""
    out_dir = Path(out_dir)
    page = out_dir / "report.html"
    table_rows = [{**r, "setting": cell_setting(c),
                   "plan report": anchor(out_dir / "cells" / str(c["cell"]) / "plan" / "report.html", page, "report")}
                  for c, r in zip(cells, rows)]
    table_rows += [{"cell": f"{name} (baseline)", "success": b["success_rate"],
                    "success_ci95": "-".join(f"{x:.2f}" for x in b["success_ci95"]),
                    "final_distance": b["mean_final_distance"], "s_per_replan": b["plan_time_mean_s"],
                    "plan report": anchor(out_dir / "baselines" / name / "report.html", page, "report")}
                   for name, b in baselines.items()]
    plot = out_dir / "sweep.png"
    body = ((f"<p>Expected: {html.escape(finding)}</p>" if finding else "")
            + table(table_rows, SWEEP_COLUMNS) + (media(plot, page) if plot.exists() else ""))
    return write_page(page, f"Ablation {cells[0]['ablation']} on {cells[0]['env']}", body)
