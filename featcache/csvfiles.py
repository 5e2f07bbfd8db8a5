"""CSV a spreadsheet opens safely, and read back exactly: what featcache writes (summary.csv,
predictions.csv, a split file) and the label files users give it. No torch here.

A text cell a spreadsheet would run as a formula starts with one of FORMULA_STARTS (a tab or a return
before one is skipped by some): it is written with a leading apostrophe, which spreadsheets show as
text (the OWASP advice on CSV injection). A cell that starts with an apostrophe gets one too, so that
read_csv gives back exactly the text written. Numbers are written as they are.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def spreadsheet_safe(value):
    """`value` as a CSV cell: text starting like a formula (FORMULA_STARTS) behind an apostrophe."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_text(columns: list[str], rows, delimiter: str = ",") -> str:
    """rows (dicts; a missing column is an empty cell) as CSV text with a header, every text cell
    spreadsheet_safe."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n", delimiter=delimiter)
    writer.writerow(columns)
    writer.writerows([spreadsheet_safe(row.get(column, "")) for column in columns] for row in rows)
    return buffer.getvalue()


def read_csv(path: str | Path, delimiter: str = ",") -> list[dict[str, str]]:
    """The rows of a CSV (one featcache wrote, or a user's: a cell behind featcache's apostrophe is given
    back without it), as dicts keyed by the header row. A file that is not UTF-8 text raises ValueError."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            return [{key: value[1:] if isinstance(value, str) and value.startswith("'") else value
                     for key, value in row.items()} for row in csv.DictReader(handle, delimiter=delimiter)]
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable CSV ({' '.join(str(error).split())[:100]})") from None
