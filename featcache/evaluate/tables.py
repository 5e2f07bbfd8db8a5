"""Tables as Markdown, for the terminal and for summary.md (CSV: featcache.csvfiles): no plotting
library needed to print one."""
from __future__ import annotations

SUMMARY_COLUMNS = ["approach", "final_train_acc", "final_test_acc", "final_test_balanced_acc",
                   "best_test_acc_on_test_set", "train_test_gap",
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
