"""Print a markdown table of per-organ Dice from ``medseg evaluate`` metrics files.

Usage: python tools/results_table.py TITLE=metrics.json [TITLE=metrics.json ...]

Each cell is the organ's mean Dice over the validation cases, with the number of cases in which
the organ was missed; the last rows are the mean Dice and the mean of the organs' HD95 medians.
"""
import json
import math
import sys
from pathlib import Path


def main(args: list[str]) -> None:
    columns = []
    for arg in args:
        title, path = arg.split("=", 1)
        columns.append((title, json.loads(Path(path).read_text())["summary"]))
    labels = columns[0][1]["per_label"]
    print("| organ (cases) | " + " | ".join(t for t, _ in columns) + " |")
    print("| --- |" + " --- |" * len(columns))
    for key, first in labels.items():
        cells = []
        for _, s in columns:
            row = s["per_label"][key]
            missed = row["n_missed"]
            note = "" if not missed else " (missed)" if missed == row["n"] else f" ({missed} missed)"
            cells.append(f"{row['dice']:.3f}{note}")
        print(f"| {first['name']} ({first['n']}) | " + " | ".join(cells) + " |")
    means = [s["mean"]["dice"] for _, s in columns]
    print("| **mean Dice** | " + " | ".join(f"**{m:.3f}**" for m in means) + " |")
    hd = [float(s["mean"]["hd95_median"]) for _, s in columns]
    print("| mean of the organs' HD95 medians (mm) | " + " | ".join("inf" if math.isinf(h) else f"{h:.1f}" for h in hd)
          + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
