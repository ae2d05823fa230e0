"""Held-out benchmark tasks that nobody tuned for: question type (TREC), movie-review sentence sentiment
(MR, Pang & Lee) and banking intent (BANKING77).

The data is read from snapshots of public GitHub repositories (git directories, e.g. made by a mirror of
GitHub) and written as task.toml + train.csv (the pool) + test.csv per task, the layout of ../shared/data.
The data is not committed here (licences below); rebuild it with

    python scripts/heldout_data.py --mirrors /work/.mirror --out .cache/heldout

| task | source repository @ commit | licence |
|---|---|---|
| trec6 | tmadhuri/TREC-HindiData @ 15f8c5be (train_5500.label, TREC_10.en.label: Li & Roth 2002) | none stated; TREC QC data is distributed for research |
| mr | adarsh-kr/NLPModel @ 5f1fb0a6 (MR/rt-polarity.{pos,neg}, sentence polarity v1.0) | none stated; Pang & Lee's page offers it for research |
| banking77 | donnytk/task-specific-datasets @ 2fdac098 (a fork of PolyAI-LDN's, banking_data/) | CC BY-NC 4.0 (the repo's LICENSE) |

Label descriptions were written from the label names only (no texts of the data): the task files give the
model what a new user would, nothing tuned on the data.
"""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import tomli_w

TREC_LABELS = {
    "ABBR": ("abbreviation", "Asks what an abbreviation stands for or the short form of something.",
             "What does the abbreviation NATO stand for ?"),
    "DESC": ("description", "Asks for a definition, description, manner or reason.", "Why is the sky blue ?"),
    "ENTY": ("entity", "Asks for a thing: an animal, colour, food, product, event, term, language and the like.",
             "What instrument does a cellist play ?"),
    "HUM": ("human", "Asks for a person, a group of people or an organization.", "Who painted the Mona Lisa ?"),
    "LOC": ("location", "Asks for a place: a city, country, mountain, state or other location.",
            "Where is the Eiffel Tower ?"),
    "NUM": ("number", "Asks for a number: a count, date, distance, money, percentage, period, size.",
            "How many legs does a spider have ?"),
}


def git_show(git_dir: Path, path: str, encoding: str = "utf-8") -> str:
    raw = subprocess.run(["git", "--git-dir", str(git_dir), "show", f"HEAD:{path}"], check=True,
                         capture_output=True).stdout
    return raw.decode(encoding, errors="replace")


def find_git(mirrors: Path, repo: str) -> Path:
    base = mirrors / repo.replace("/", "+") / "repo"
    return base / ".git" if (base / ".git").is_dir() else base


def write_task(out: Path, name: str, description: str, labels: list[dict], train: pd.DataFrame, test: pd.DataFrame):
    out.mkdir(parents=True, exist_ok=True)
    (out / "task.toml").write_text(tomli_w.dumps({"task": {"name": name, "description": description, "labels": labels}}))
    train[["text", "label"]].to_csv(out / "train.csv", index=False)
    test[["text", "label"]].to_csv(out / "test.csv", index=False)
    print(f"{out}: pool {len(train)}, test {len(test)}, {train.label.nunique()} classes")


def trec(mirrors: Path, out: Path) -> None:
    git = find_git(mirrors, "tmadhuri/TREC-HindiData")

    def parse(text: str) -> pd.DataFrame:
        rows = [line.split(" ", 1) for line in text.splitlines() if line.strip()]
        return pd.DataFrame({"label": [r[0].split(":")[0] for r in rows], "text": [r[1].strip() for r in rows]})

    train, test = parse(git_show(git, "train_5500.label", "latin-1")), parse(git_show(git, "TREC_10.en.label", "latin-1"))
    labels = [{"name": k, "description": f"{v[0]}: {v[1]}", "examples": [v[2]]} for k, v in TREC_LABELS.items()]
    write_task(out / "trec6", "question-type", "Classify a question by the type of answer it asks for.", labels,
               train.drop_duplicates("text"), test.drop_duplicates("text"))


def mr(mirrors: Path, out: Path, pool: int = 6000, test: int = 2000, seed: int = 0) -> None:
    git = find_git(mirrors, "adarsh-kr/NLPModel")
    frames = [pd.DataFrame({"text": [t.strip() for t in git_show(git, f"MR/rt-polarity.{s}", "latin-1").splitlines() if t.strip()],
                            "label": s}) for s in ("pos", "neg")]
    data = pd.concat(frames).drop_duplicates("text").sample(frac=1.0, random_state=seed).reset_index(drop=True)
    labels = [
        {"name": "pos", "description": "A positive opinion of the film: praise, enjoyment, recommendation.",
         "examples": ["a warm , funny and beautifully acted film ."]},
        {"name": "neg", "description": "A negative opinion of the film: criticism, boredom, disappointment.",
         "examples": ["a dull , plodding mess that wastes its cast ."]},
    ]
    write_task(out / "mr", "movie-sentiment", "Is this sentence from a movie review positive or negative?", labels,
               data.iloc[:pool], data.iloc[pool:pool + test])


def banking(mirrors: Path, out: Path) -> None:
    git = find_git(mirrors, "donnytk/task-specific-datasets")
    from io import StringIO

    train = pd.read_csv(StringIO(git_show(git, "banking_data/train.csv"))).rename(columns={"category": "label"})
    test = pd.read_csv(StringIO(git_show(git, "banking_data/test.csv"))).rename(columns={"category": "label"})
    # A few rows of the fork's CSV lack a label (a stray line break): dropped.
    train, test = train.dropna(), test.dropna()
    names = sorted(train.label.unique())
    labels = [{"name": n, "description": n.replace("_", " ").capitalize() + "."} for n in names]
    write_task(out / "banking77", "banking-intent", "The intent of a customer's message to an online bank.", labels,
               train.drop_duplicates("text"), test.drop_duplicates("text"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mirrors", type=Path, default=Path("/work/.mirror"))
    parser.add_argument("--out", type=Path, default=Path(".cache/heldout"))
    args = parser.parse_args()
    np.random.seed(0)
    trec(args.mirrors, args.out)
    mr(args.mirrors, args.out)
    banking(args.mirrors, args.out)


if __name__ == "__main__":
    main()
