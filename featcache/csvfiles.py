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
from typing import Iterator

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


MAX_COLUMNS = 1000  # a label or exclude file of more columns is no table of images (each row is a dict of them)


def iter_csv(path: str | Path, delimiter: str = ",", max_columns: int | None = None) -> Iterator[dict[str, str]]:
    """The rows of a CSV (one featcache wrote, or a user's: a cell behind featcache's apostrophe is given
    back without it), one at a time, as dicts keyed by the header row: a file's rows are never all held,
    so a reader that checks each row stops at the first bad one. A file that is not UTF-8 text, or whose
    header has over `max_columns` columns, raises ValueError."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter)
            if max_columns is not None and reader.fieldnames is not None and len(reader.fieldnames) > max_columns:
                raise ValueError(f"{path} has {len(reader.fieldnames):,} columns, over featcache's bound of "
                                 f"{max_columns:,}")
            for row in reader:
                yield {key: value[1:] if isinstance(value, str) and value.startswith("'") else value
                       for key, value in row.items()}
    except (UnicodeDecodeError, csv.Error) as error:
        raise ValueError(f"{path} is not a readable CSV ({' '.join(str(error).split())[:100]})") from None


def read_csv(path: str | Path, delimiter: str = ",") -> list[dict[str, str]]:
    """Every row of a CSV (iter_csv), as a list."""
    return list(iter_csv(path, delimiter))
