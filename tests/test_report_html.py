"""The HTML report: rendered in headless Chromium, every section is there, every image
loads, nothing is logged to the console; and its parts, checked without a browser."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from weaklesion.cli import app
from weaklesion.data import write_phantom_dataset
from weaklesion.data.truth import lesion_truth
from weaklesion.detection import Detections, write_detections_csv
from weaklesion.report.html import metric_rows, outcome_slices, render_slice, worst_first
from weaklesion.report.viewers import OUTCOMES, case_outcomes

runner = CliRunner()
SECTIONS = ("metrics", "froc", "calibration", "counts", "training", "gallery", "settings")
# Where the test leaves the screenshot when asked (the README's docs/report.png).
SCREENSHOT_ENV = "WEAKLESION_REPORT_SCREENSHOT"

# Records errors (scripts, failed resources, console.error) and, once the page has
# loaded, every image's natural width into a <pre id="probe"> that --dump-dom prints.
PROBE = """<script>
window.probeErrors = [];
window.addEventListener("error", function (event) {
  window.probeErrors.push(String(event.message || (event.target && event.target.src)));
}, true);
var originalError = console.error;
console.error = function () {
  window.probeErrors.push(Array.prototype.join.call(arguments, " "));
  originalError.apply(console, arguments);
};
window.addEventListener("load", function () {
  var probe = document.createElement("pre");
  probe.id = "probe";
  probe.textContent = JSON.stringify({
    errors: window.probeErrors,
    images: Array.prototype.map.call(document.images, function (image) {
      return [image.alt, image.naturalWidth, image.naturalHeight];
    }),
  });
  document.body.appendChild(probe);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip(
        "no Chromium here: `make test` installs Debian's chromium where it runs as root "
        "with apt-get; install it to render the report"
    )


def browse(page: Path, *options: str) -> subprocess.CompletedProcess:
    command = [
        chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--virtual-time-budget=10000",
        *options,
        page.resolve().as_uri(),
    ]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert finished.returncode == 0, finished.stderr[-2000:]
    return finished


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory) -> Path:
    """A tiny trained run, and detections with hits, false positives and misses made
    from its phantom's truth, evaluated with the run: the folder of metrics.html."""
    root = tmp_path_factory.mktemp("report")
    data = write_phantom_dataset(root / "data", n_cases=6, seed=4, shape=(16, 48, 48))
    run = root / "run"
    settings = ["epochs=3", "num_threads=1", "sigma=1.5", "model_kwargs.features=[2, 2, 2, 2, 2]"]
    result = runner.invoke(
        app,
        ["train", str(data), "--out", str(run)]
        + [item for setting in settings for item in ("--set", setting)],
    )
    assert result.exit_code == 0, result.output
    truth, _, _ = lesion_truth(data)
    rng = np.random.default_rng(0)
    found = {}
    for index, (case, points) in enumerate(truth.items()):
        kept = points[index % 3 :]
        decoys = rng.uniform([2, 4, 4], [13, 43, 43], size=(index % 4, 3))
        found[case] = Detections(
            np.concatenate([kept + rng.normal(0, 0.4, kept.shape), decoys]),
            np.concatenate([rng.uniform(0.5, 1.0, len(kept)), rng.uniform(0.3, 0.8, len(decoys))]),
        )
    write_detections_csv(root / "lesions.csv", found)
    result = runner.invoke(
        app,
        [
            "evaluate",
            str(root / "lesions.csv"),
            "--truth",
            str(data),
            "--run",
            str(run),
            "--out",
            str(root / "metrics.json"),
            "--threshold",
            "0.5",
        ],
    )
    assert result.exit_code == 0, result.output
    assert (root / "metrics.html").exists()
    return root


@pytest.mark.slow
def test_report_renders_in_chromium_with_every_section_and_image_and_no_errors(evaluated):
    page = evaluated / "metrics.html"
    text = page.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # nothing to fetch: works offline
    probed = evaluated / "probed.html"
    probed.write_text(text.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    finished = browse(probed, "--dump-dom")
    dom = finished.stdout

    for section in SECTIONS:
        match = re.search(rf'<section id="{section}">(.*?)</section>', dom, re.S)
        assert match, section
        assert re.search(r"<h2>[^<]+</h2>", match.group(1)), section
        expected = "<table" if section in ("metrics", "settings") else "<img"
        assert expected in match.group(1), section
    assert re.search(r"<td>F1</td>\s*<td[^>]*>\d\.\d{3}</td>\s*<td[^>]*>\d\.\d{3} – \d\.\d{3}", dom)
    for case in json.loads((evaluated / "metrics.json").read_text())["cases"]:
        assert f'id="case-{case}"' in dom

    probe = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert probe, "the page's load event never fired"
    report = json.loads(html.unescape(probe.group(1)))
    assert report["errors"] == []
    assert len(report["images"]) >= 6 + 6
    for alt, width, height in report["images"]:
        assert width > 0 and height > 0, alt

    shot = evaluated / "report.png"
    browse(page, f"--screenshot={shot}", "--window-size=1280,4000")
    picture = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert picture.shape == (4000, 1280, 3)
    assert picture.std() > 20
    for name, (_, colour) in OUTCOMES.items():
        rgb = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)])
        assert (np.abs(picture - rgb).max(axis=2) <= 8).sum() > 50, name
    target = os.environ.get(SCREENSHOT_ENV)
    if target:
        top = Image.open(shot).convert("RGB").crop((0, 0, 1280, 2240))
        small = top.resize((800, 1400), Image.LANCZOS)
        small.quantize(256, method=Image.Quantize.FASTOCTREE).save(target, optimize=True)


@pytest.mark.slow
def test_report_command_rewrites_the_page_from_the_result_file(evaluated, tmp_path):
    out = tmp_path / "again.html"
    result = runner.invoke(app, ["report", str(evaluated / "metrics.json"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in text
    assert text.count("data:image/png;base64,") >= 12
    assert str(evaluated / "run") in text


def test_report_refuses_a_file_that_is_not_an_evaluation(tmp_path):
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"cases": {}}))
    result = runner.invoke(app, ["report", str(path)])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == f"error: {path}: has no 'settings'; expected a `weaklesion evaluate` result"
    )


def test_cases_are_ordered_worst_first_and_slices_misses_first():
    truth = [[2.0, 3.0, 3.0], [5.0, 9.0, 9.0]]
    perfect = case_outcomes(truth, [0.9, 0.9], truth, 1.0, 0.5)
    one_miss = case_outcomes(truth[:1], [0.9], truth, 1.0, 0.5)
    miss_and_fp = case_outcomes([[2.0, 3.0, 3.0], [7.0, 1.0, 1.0]], [0.9, 0.9], truth, 1.0, 0.5)
    order = worst_first({"perfect": perfect, "one_miss": one_miss, "both": miss_and_fp})
    assert order == ["both", "one_miss", "perfect"]
    assert outcome_slices(miss_and_fp, 8) == [5, 7, 2]


def test_a_slice_marks_each_outcome_in_its_colour_where_the_point_is():
    truth = [[2.0, 3.0, 3.0], [2.0, 12.0, 12.0]]
    found = case_outcomes([[2.0, 3.0, 3.0], [2.0, 12.0, 3.0]], [0.9, 0.7], truth, 1.0, 0.5)
    image = np.zeros((4, 16, 16))
    png = render_slice(image, found, 2, (0.0, 1.0), pixels=160)
    picture = np.asarray(Image.open(__import__("io").BytesIO(png)).convert("RGB")).astype(int)
    assert picture.shape == (160, 160, 3)
    scale = 10
    for name, (y, x) in (("hit", (3, 3)), ("false positive", (12, 3)), ("miss", (12, 12))):
        rgb = np.array([int(OUTCOMES[name][1][i : i + 2], 16) for i in (1, 3, 5)])
        centre = (np.array([y, x]) + 0.5) * scale
        window = picture[
            int(centre[0]) - 25 : int(centre[0]) + 25, int(centre[1]) - 25 : int(centre[1]) + 25
        ]
        assert (np.abs(window - rgb).max(axis=2) <= 2).sum() > 20, name


def test_metric_intervals_contain_the_estimate_and_pool_the_cases():
    evaluation = {
        "detection": {"f1": 0.6, "precision": 0.6, "recall": 0.6, "fp_per_image": 1.0},
        "cases": {
            "a": {"tp": 3, "fp": 0, "fn": 0},
            "b": {"tp": 0, "fp": 2, "fn": 2},
        },
        "fauc": {"estimate": 0.5, "low": 0.2, "high": 0.8},
        "calibration": {"ece": 0.1},
        "settings": {"max_fp": 5.0},
    }
    rows = {row["name"]: row for row in metric_rows(evaluation, n_boot=200)}
    f1 = rows["F1"]
    # Resamples are (a, a), (a, b) or (b, b): F1 1, 6/10 or 0, so the interval spans them.
    assert f1["low"] == pytest.approx(0.0) and f1["high"] == pytest.approx(1.0)
    assert rows["false positives per image"]["high"] == pytest.approx(2.0)
    assert rows["ECE"]["low"] is None


def test_a_report_without_run_or_counts_says_so_and_still_has_every_section(tmp_path):
    from weaklesion.metrics import evaluate_detections
    from weaklesion.report.html import evaluation_outcomes, write_report

    truth = {"a": np.array([[2.0, 5.0, 5.0]]), "b": np.array([[4.0, 9.0, 9.0]])}
    found = {"a": (np.array([[2.0, 5.0, 6.0]]), np.array([0.8]))}
    evaluation = evaluate_detections(found, truth, 2.0, n_boot=50)
    outcomes = evaluation_outcomes(evaluation, found, truth)
    page = write_report(
        tmp_path / "r.html", evaluation, outcomes, lambda case: np.ones((6, 12, 12))
    )
    text = page.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in text, section
    assert "No training history: no run folder was given" in text
    assert "The evaluation has no counts" in text
    assert text.index('id="case-b"') < text.index('id="case-a"')
