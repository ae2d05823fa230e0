"""Features of each benchmark dataset, computed once and cached on disk for the model benchmark.

.cache/bench/<dataset>/<featurizer>.{npy,npz} holds the rows of the pool, then the test set, then the
label texts (name, "name: description", examples) of the task, in that order. TF-IDF vocabularies are
fitted on the pool texts only (no labels), as a new project does.

    python scripts/bench_features.py --datasets sms_spam ag_news      # featurize (skips what is cached)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

ROOT = Path(__file__).resolve().parent.parent
# ../shared beside the repo; a git worktree one level deeper (wt/NAME) finds it beside its parent.
SHARED = next((p / "shared" / "data" for p in (ROOT.parent, ROOT.parent.parent) if (p / "shared" / "data").is_dir()),
              ROOT.parent / "shared" / "data")
HELDOUT = ROOT / ".cache" / "heldout"
CACHE = ROOT / ".cache" / "bench"
SHARED_SETS = ["sms_spam", "ag_news", "corona_nlp"]
HELDOUT_SETS = ["trec6", "mr", "banking77"]
FEATURIZERS = ["tfidf", "plain", "minilm", "use"]


def dataset_dir(name: str) -> Path:
    return SHARED / name if name in SHARED_SETS else HELDOUT / name


def label_texts(spec) -> tuple[list[str], list[str]]:
    """Texts that describe each label, for zero-shot prototypes: the name, name + description, examples."""
    from synthloop.learn.models import label_prompts

    texts, labels = [], []
    for label, prompts in label_prompts(spec).items():
        texts += prompts
        labels += [label] * len(prompts)
    return texts, labels


def load(name: str) -> dict:
    from synthloop.task import load_task

    d = dataset_dir(name)
    spec = load_task(d / "task.toml")
    pool, test = pd.read_csv(d / "train.csv"), pd.read_csv(d / "test.csv")
    lt, ll = label_texts(spec)
    return {"name": name, "spec": spec, "pool_text": list(pool.text.astype(str)), "pool_y": np.asarray(pool.label.astype(str)),
            "test_text": list(test.text.astype(str)), "test_y": np.asarray(test.label.astype(str)),
            "label_text": lt, "label_y": np.asarray(ll), "labels": spec.label_names}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def featurize(data: dict, featurizer: str):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.pipeline import FeatureUnion

    texts = data["pool_text"] + data["test_text"] + data["label_text"]
    if featurizer == "tfidf":
        from synthloop.learn.models import make_featurizer

        vec = make_featurizer("tfidf-lr").fit(data["pool_text"])
        return sp.csr_matrix(vec.transform(texts), dtype=np.float32)
    if featurizer == "plain":
        # The 60-line script: word 1-2 + char_wb 2-5, min_df 2, sublinear tf.
        vec = FeatureUnion([("w", TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)),
                            ("c", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), min_df=2, sublinear_tf=True))])
        vec.fit(data["pool_text"])
        return sp.csr_matrix(vec.transform(texts), dtype=np.float32)
    from synthloop.learn.embed import SentenceEmbedder

    model = {"minilm": "all-MiniLM-L6-v2", "use": "use-multilingual"}[featurizer]
    return SentenceEmbedder(model=model).transform(texts)


def cached(name: str, featurizer: str, data: dict | None = None):
    """The cached matrix (computing and storing it when missing) and the seconds it took when computed."""
    folder = CACHE / name
    folder.mkdir(parents=True, exist_ok=True)
    dense, sparse = folder / f"{featurizer}.npy", folder / f"{featurizer}.npz"
    if dense.exists():
        return np.load(dense)
    if sparse.exists():
        return sp.load_npz(sparse).tocsr()
    data = data or load(name)
    t, c = time.perf_counter(), _cpu()
    X = featurize(data, featurizer)
    info = {"rows": X.shape[0], "cols": X.shape[1], "wall_s": round(time.perf_counter() - t, 2),
            "cpu_s": round(_cpu() - c, 2), "load": os.getloadavg()}
    (folder / f"{featurizer}.json").write_text(json.dumps(info))
    print(name, featurizer, info, flush=True)
    if sp.issparse(X):
        sp.save_npz(sparse, X)
    else:
        np.save(dense, X.astype(np.float32))
    return X


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=SHARED_SETS + HELDOUT_SETS)
    parser.add_argument("--featurizers", nargs="*", default=FEATURIZERS)
    args = parser.parse_args()
    for name in args.datasets:
        data = load(name)
        for f in args.featurizers:
            cached(name, f, data)


if __name__ == "__main__":
    main()
