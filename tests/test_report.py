"""report.html (wmplan.report): a page that parses, links only files that exist, and shows
the plots and videos of an evaluation; the sweep's page is tested in test_sweep.py."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np

from wmplan.report import write_evaluation_report


class Links(HTMLParser):
    """Every src and href of a page, and its text."""

    def __init__(self):
        super().__init__()
        self.links, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href")]

    def handle_data(self, data):
        self.text.append(data)


def parse(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser


def linked_files(page: Path) -> list[Path]:
    """The files ``page`` links to; each must exist."""
    files = [page.parent / unquote(link) for link in parse(page).links]
    missing = [str(f) for f in files if not f.is_file()]
    assert not missing, f"{page} links to missing files {missing}"
    return files


def fake_results(episodes: int = 4, steps: int = 6) -> dict:
    records = [{"episode": i, "success": i % 2 == 0, "success_any": i % 2 == 0 or i == 1,
                "final_distance": 0.1 + i, "min_distance": 0.05 + i, "steps": steps, "plan_times": [1.0],
                "distances": list(np.linspace(2, 0.1 + i, steps)), "successes": [False] * (steps - 1) + [i % 2 == 0]}
               for i in range(episodes)]
    return {"episodes": episodes, "success_rate": 0.5, "success_ci95": [0.15, 0.85], "success_rate_any": 0.75,
            "mean_final_distance": 1.6, "mean_min_distance": 1.55, "replans": 1, "plan_time_mean_s": 1.0,
            "plan_time_max_s": 1.0, "records": records, "checkpoint": {"path": "a<b>.ckpt", "sha256": "ab" * 32},
            "config": {"env": {"name": "wall"}, "world_model": "runs/a<b>.ckpt", "planner": {"name": "cem"}}}


def test_evaluation_report_links_plots_and_videos(tmp_path):
    videos = [tmp_path / "videos" / "episode_000_success.gif", tmp_path / "videos" / "episode 001_failure.mp4"]
    for v in videos:
        v.parent.mkdir(exist_ok=True)
        v.write_bytes(b"video")
    page = write_evaluation_report(tmp_path / "report.html", fake_results(), dict(zip((0, 1), videos)))
    files = linked_files(page)
    names = {f.name for f in files}
    assert {"report_final_distance.png", "report_success_curve.png", "report_distance_curve.png"} <= names
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names if n.endswith(".png"))
    assert {v.name for v in videos} <= names  # shown, and linked from their episodes' rows
    html = page.read_text()
    assert "<video" in html and 'src="videos/episode%20001_failure.mp4"' in html
    assert "a&lt;b&gt;.ckpt" in html and "a<b>" not in html  # text is escaped
    text = " ".join(parse(page).text)
    assert "0.50 [95% CI 0.15-0.85]" in text and "wall: a<b>.ckpt (4 episodes)" in text
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []  # no temp files left


def test_evaluation_report_without_videos(tmp_path):
    page = write_evaluation_report(tmp_path / "report.shard-0-of-2.html", fake_results(episodes=1))
    assert sorted(f.name for f in linked_files(page)) == [
        "report.shard-0-of-2_distance_curve.png", "report.shard-0-of-2_final_distance.png",
        "report.shard-0-of-2_success_curve.png"]
