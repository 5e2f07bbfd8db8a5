"""The audit as one self-contained HTML page: each list a gallery of thumbnails (embedded as PNG data,
never linked), with the image's id, its given and suggested label and the score. No script, no style
sheet or font from elsewhere: it opens offline and shows the same everywhere."""
from __future__ import annotations

import base64
import html
import io

THUMBNAIL = 96  # pixels, the longer side
GALLERY = 60  # images per list shown (the CSV files hold them all)


def thumbnail(path: str | None) -> str:
    """An <img> of the file as embedded PNG data, or a note where there is none or it cannot be read."""
    if path is None:
        return '<div class="none">no image file</div>'
    from ..data.datasets import read_image
    from ..errors import FeatcacheError

    try:
        image = read_image(path)  # featcache's own bound and formats
    except FeatcacheError:
        return '<div class="none">unreadable</div>'
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return f'<img alt="" src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def _card(images: list[str], lines: list[str]) -> str:
    text = "".join(f"<div>{html.escape(line)}</div>" for line in lines)
    return f'<figure>{"".join(images)}<figcaption>{text}</figcaption></figure>'


def _table(columns: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(column)}</th>" for column in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _mistakes(run: dict, losses: list[dict], confused: list[dict], file_of) -> str:
    """One run's section: its most-confused class pairs as a table, its top losses as a gallery."""
    seeds = f" (mean of {run['seeds']} seeds' probabilities)" if run["seeds"] > 1 else ""
    note = (f"{run['wrong']} of {run['test_images'] * run['seeds']} test predictions wrong; "
            f"{run['in_this_cache']} of its {run['test_images']} test images are in this cache's test split with "
            "the same path and label (thumbnails only for those).")
    return (f"<h2>{html.escape('Mistakes of ' + run['run'])}</h2><p>{html.escape(note)}</p>"
            "<h3>Most-confused class pairs</h3>"
            + _table(["given", "predicted", "count", "share of given"],
                     [[row["given"], row["predicted"], row["count"], f"{row['share_of_given']:.3f}"]
                      for row in confused[:GALLERY]])
            + f"<h3>{html.escape('Top losses' + seeds)}</h3>" + '<div class="gallery">' + "".join(_card(
                [thumbnail(file_of("test", row["path"]) if row.get("in_cache") else None)],
                [row["path"], f"given {row['given']}", f"predicted {row['predicted']}", f"loss {row['loss']:.3f}",
                 f"p(given) {row['given_probability']:.3f}"]) for row in losses[:GALLERY]) + "</div>")


def audit_html(summary: dict, label_issues: list[dict], duplicates: list[dict], outliers: list[dict],
               file_of, losses: list[dict] = (), confused: list[dict] = ()) -> str:
    """The page; `file_of(split, id)` gives an image's file (None where there are no files); `losses`
    and `confused` the runs' top losses and most-confused pairs (featcache.evaluate.mistakes), in the
    order of summary["runs"]."""
    sections = []
    probe = summary["probe"]
    sections.append("<h2>Label-issue candidates</h2><p>" + html.escape(
        f"{len(label_issues)} flagged; the probe's out-of-fold accuracy is {probe['out_of_fold_accuracy']:.4f} "
        f"({probe['folds']} folds): the weaker the probe, the more clean images it flags.") + "</p>")
    sections.append('<div class="gallery">' + "".join(_card(
        [thumbnail(file_of(row["split"], row["path"]))],
        [row["path"], f"given {row['given']}", f"suggested {row['suggested']}",
         f"p(given) {row['given_probability']:.3f}"]) for row in label_issues[:GALLERY]) + "</div>")
    sections.append("<h2>Duplicates and leakage</h2><p>" + html.escape(
        f"{summary['duplicates']['exact']} exact and {summary['duplicates']['near']} near pairs (cosine >= "
        f"{summary['duplicates']['near_cosine']}); train-test pairs are leakage: a test image the model may have "
        "seen in training.") + "</p>")
    sections.append('<div class="gallery">' + "".join(_card(
        [thumbnail(file_of(row["a_split"], row["a"])), thumbnail(file_of(row["b_split"], row["b"]))],
        [f"{row['kind']} ({row['scope']}), cosine {row['cosine']:.4f}", f"{row['a']} ({row['a_label']})",
         f"{row['b']} ({row['b_label']})"]) for row in duplicates[:GALLERY]) + "</div>")
    sections.append("<h2>Outliers</h2><p>Training images farthest from their class (one minus the mean cosine "
                    "similarity to their nearest images of the same class).</p>")
    sections.append('<div class="gallery">' + "".join(_card(
        [thumbnail(file_of(row["split"], row["path"]))], [row["path"], row["label"], f"distance {row['distance']:.4f}"])
        for row in outliers[:GALLERY]) + "</div>")
    for run in summary.get("runs", []):
        sections.append(_mistakes(run, [row for row in losses if row["run"] == run["run"]],
                                  [row for row in confused if row["run"] == run["run"]], file_of))
    style = ("body{font-family:sans-serif;margin:1em}.gallery{display:flex;flex-wrap:wrap;gap:8px}"
             "figure{margin:0;width:210px;font-size:12px;border:1px solid #ccc;padding:4px}"
             "figure img{margin-right:2px}.none{width:96px;height:40px;color:#888}"
             "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}")
    title = html.escape(f"featcache audit of {summary['cache']}")
    return (f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style></head>'
            f"<body><h1>{title}</h1>" + "".join(sections) + "</body></html>\n")
