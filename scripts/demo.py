"""`make demo`: an active-learning loop on the committed SMS spam sample, margin sampling vs random."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.table import Table

from synthloop import simulate

HERE = Path(__file__).resolve().parent.parent / "examples" / "sms_spam"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=int, default=150)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--strategy", default="margin")
    args = parser.parse_args()
    console = Console()
    runs = {}
    for strategy in (args.strategy, "random"):
        with console.status(f"simulating {strategy} sampling"):
            runs[strategy] = simulate(HERE / "task.toml", HERE / "pool.csv", HERE / "test.csv", strategy=strategy,
                                      budget=args.budget, batch=args.batch, seed=0)
    table = Table(title=f"SMS spam: accuracy per round ({args.strategy} vs random, tfidf-lr)")
    table.add_column("round")
    table.add_column("labels", justify="right")
    for strategy in runs:
        table.add_column(f"{strategy} acc", justify="right")
        table.add_column(f"{strategy} macro-F1", justify="right")
    for i, point in enumerate(runs[args.strategy]["curve"]):
        other = runs["random"]["curve"][i]
        table.add_row(str(i), str(point["labels"]), f"{point['accuracy']:.3f}", f"{point['macro_f1']:.3f}",
                      f"{other['accuracy']:.3f}", f"{other['macro_f1']:.3f}")
    console.print(table)
    console.print("GPT-4o zero-shot on SMS spam (published): 0.95 accuracy")


if __name__ == "__main__":
    main()
