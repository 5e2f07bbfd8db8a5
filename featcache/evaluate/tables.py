"""Tables as Markdown, for the terminal and for summary.md, and as CSV a spreadsheet opens safely: no
plotting library needed to print one."""
from __future__ import annotations

import csv
import io
from pathlib import Path

# A text cell a spreadsheet would run as a formula starts with one of these (a tab or a return before
# one is skipped by some): it is written with a leading apostrophe, which spreadsheets show as text (the
# OWASP advice on CSV injection). A cell that starts with an apostrophe gets one too, so that read_csv
# gives back exactly the text written. Numbers are written as they are.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")

SUMMARY_COLUMNS = ["approach", "final_train_acc", "final_test_acc", "best_test_acc_on_test_set", "train_test_gap",
                   "trainable_params", "wall_time_s", "extract_time_s", "device", "run_dir"]
UNCERTAINTY_COLUMNS = ["seeds", "test_acc_std", "test_acc_ci95_seeds", "test_acc_ci95_test_images"]


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def spreadsheet_safe(value):
    """`value` as a CSV cell: text starting like a formula (FORMULA_STARTS) behind an apostrophe."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_text(columns: list[str], rows) -> str:
    """rows (dicts; a missing column is an empty cell) as CSV text with a header, every text cell
    spreadsheet_safe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([spreadsheet_safe(row.get(column, "")) for column in columns] for row in rows)
    return buffer.getvalue()


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV featcache wrote (summary.csv, predictions.csv, ...), each cell's text exactly as
    it was before spreadsheet_safe."""
    with Path(path).open(newline="") as handle:
        return [{key: value[1:] if value.startswith("'") else value for key, value in row.items()}
                for row in csv.DictReader(handle)]
