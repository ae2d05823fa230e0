"""Simulated active learning on cached features: models x strategies x seeds x datasets, cheaply.

Each dataset is featurized once (scripts/bench_features.py, cached under .cache/bench/); every loop then
trains synthloop's own TextClassifier on rows of the cached matrices and selects with synthloop's own
strategies (synthloop.learn.active.select), so the figures are the product's, without re-featurizing per run.

    python scripts/bench_models.py --configs default tfidf-lr --strategies margin random --seeds 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
from pathlib import Path

import bench_features as bf
import numpy as np
import scipy.sparse as sp

from synthloop import SynthloopError
from synthloop.learn import active
from synthloop.learn.models import HybridFeaturizer, TextClassifier, label_prompts
from synthloop.learn.selftrain import THRESHOLD, self_train

BUDGETS = [0, 25, 50, 100, 200, 500]
TASK_WEIGHT = 0.5  # ModelConfig.synthetic_weight: task examples weigh this much against a real label
# Each seed draws this share of the pool (its own random subset, the same for every model and strategy), so
# the deterministic strategies (margin, entropy, cold-start) also vary by seed and 3 seeds are 3 runs.
POOL_FRAC = 0.9

# Named model configurations. "features": which cached matrices; the rest are TextClassifier parameters.
CONFIGS: dict[str, dict] = {
    "tfidf-lr": {"features": "tfidf", "name": "tfidf-lr"},
    # The product's embed-lr (calibrated, zero-shot at round 0 like every model that embeds), with the USE
    # embedding: MiniLM costs ~13x the CPU per text and was not featurized for this run.
    "embed-lr": {"features": "use", "name": "embed-lr", "zero_shot": True},
    "embed-lr-minilm": {"features": "minilm", "name": "embed-lr", "zero_shot": True},
    "plain-tfidf": {"features": "plain", "name": "tfidf-lr", "C": 10.0, "calibrate": False, "class_weight": None,
                    "task_rows": False, "start_per_class": 2},
}


def hybrid(emb: str = "use", **kw) -> dict:
    return {"features": f"tfidf+{emb}", "name": "hybrid-lr", "embed_model": emb, **kw}


# Candidates measured on the shared sets (see benchmarks/al.md); "default" is hybrid-lr as ModelConfig ships it.
CONFIGS.update({
    "default": hybrid(calibrate=False, zero_shot=True, prior=2.0),
    "tfidf-lr-uncal": {"features": "tfidf", "name": "tfidf-lr", "calibrate": False},
    "embed-use": {"features": "use", "name": "embed-lr"},
    "embed-use-uncal": {"features": "use", "name": "embed-lr", "calibrate": False},
    "embed-use-uncal-zs": {"features": "use", "name": "embed-lr", "calibrate": False, "zero_shot": True},
    "hybrid-cal-zs": hybrid(calibrate=True, zero_shot=True),
    "hybrid-zs": hybrid(calibrate=False, zero_shot=True),
    "hybrid": hybrid(calibrate=False),
    "hybrid-zs-prior2": hybrid(calibrate=False, zero_shot=True, prior=2.0),
    "hybrid-zs-w1": hybrid(calibrate=False, zero_shot=True, embed_weight=1.0),
    "hybrid-zs-w3": hybrid(calibrate=False, zero_shot=True, embed_weight=3.0),
    "hybrid-zs-C1": hybrid(calibrate=False, zero_shot=True, C=1.0),
    "hybrid-zs-C10": hybrid(calibrate=False, zero_shot=True, C=10.0),
    "hybrid-zs-nocw": hybrid(calibrate=False, zero_shot=True, class_weight=None),
    "hybrid-zs-task1": hybrid(calibrate=False, zero_shot=True, task_weight=1.0),
    "hybrid-minilm-zs": hybrid("minilm", calibrate=False, zero_shot=True),
    "p2-C1": hybrid(calibrate=False, zero_shot=True, prior=2.0, C=1.0),
    "p2-C10": hybrid(calibrate=False, zero_shot=True, prior=2.0, C=10.0),
    "p2-w3": hybrid(calibrate=False, zero_shot=True, prior=2.0, embed_weight=3.0),
    "p2-w1": hybrid(calibrate=False, zero_shot=True, prior=2.0, embed_weight=1.0),
    # Self-training: the default plus weak labels of weight 0.3, per class the pool texts most confidently
    # predicted as it, at most the real labels of the average class (t9: only those at probability >= 0.9).
    "default-st": hybrid(calibrate=False, zero_shot=True, prior=2.0, self_train=0.3),
    "default-st-t9": hybrid(calibrate=False, zero_shot=True, prior=2.0, self_train=0.3, self_train_threshold=0.9),
})


class CachedHybrid(HybridFeaturizer):
    """HybridFeaturizer whose rows come from the cached matrices (looked up by text)."""

    def __init__(self, tfidf, emb, index, embed_weight: float = 2.0):
        super().__init__(embed_weight=embed_weight)
        self.tfidf_rows, self.emb_rows, self.index = tfidf, emb, index
        self.embedding_dim_ = emb.shape[1]

    def embed(self, texts):
        return self.emb_rows[[self.index[t] for t in texts]]

    def transform(self, texts):
        rows = [self.index[t] for t in texts]
        return self.combine(self.tfidf_rows[rows], self.emb_rows[rows])


class CachedEmbedder:
    def __init__(self, emb, index):
        self.emb_rows, self.index = emb, index

    def embed(self, texts):
        return self.emb_rows[[self.index[t] for t in texts]]

    transform = embed

    def embedding_block(self, X):
        return np.asarray(X)


class CachedSparse:
    def __init__(self, rows, index):
        self.rows, self.index = rows, index

    def transform(self, texts):
        return self.rows[[self.index[t] for t in texts]]


def build(data: dict, cfg: dict):
    """(featurizer, X of every row: pool, test, label texts)."""
    texts = data["pool_text"] + data["test_text"] + data["label_text"]
    index = {}
    for i, t in enumerate(texts):
        index.setdefault(t, i)
    parts = cfg["features"].split("+")
    mats = [bf.cached(data["name"], p, data) for p in parts]
    if len(parts) == 2:
        f = CachedHybrid(mats[0], mats[1], index, cfg.get("embed_weight", 2.0))
        return f, f.combine(mats[0], mats[1])
    if sp.issparse(mats[0]):
        return CachedSparse(mats[0], index), mats[0]
    return CachedEmbedder(mats[0], index), mats[0]


def evaluate(y_true, y_pred) -> dict:
    from sklearn.metrics import f1_score

    return {"accuracy": float(np.mean(y_true == y_pred)),
            "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=sorted(set(y_true)), zero_division=0))}


def run(data: dict, feats, cfg: dict, strategy, seed: int, budget: int = 500, batch: int = 25,
        pool_frac: float = POOL_FRAC) -> dict:
    featurizer, X = feats
    n_pool, n_test = len(data["pool_text"]), len(data["test_text"])
    X_pool, X_test = X[:n_pool], X[n_pool:n_pool + n_test]
    labels = data["labels"]
    params = {k: cfg[k] for k in ("name", "C", "calibrate", "class_weight", "prior", "embed_weight") if k in cfg}
    prompts = label_prompts(data["spec"]) if cfg.get("zero_shot") else None
    task_rows = [(t, lab) for t, lab in data["spec"].examples()] if cfg.get("task_rows", True) else []
    X_task = featurizer.transform([t for t, _ in task_rows]) if task_rows else None
    rng = np.random.default_rng(seed)
    allowed = np.ones(n_pool, dtype=bool)
    if pool_frac < 1:  # the seed's share of the pool; its own generator, so every strategy gets the same share
        allowed[:] = False
        allowed[np.random.default_rng(10_000 + seed).choice(n_pool, round(pool_frac * n_pool), replace=False)] = True
    labeled: list[int] = []
    if cfg.get("start_per_class"):
        for lab in labels:
            idx = np.flatnonzero((data["pool_y"] == lab) & allowed)
            labeled += list(rng.choice(idx, min(cfg["start_per_class"], len(idx)), replace=False))
    curve, started, cpu0 = [], time.perf_counter(), _cpu()
    rounds = 0
    while True:
        y = [data["pool_y"][i] for i in labeled] + [lab for _, lab in task_rows]
        w = np.r_[np.ones(len(labeled)), np.full(len(task_rows), cfg.get("task_weight", TASK_WEIGHT))]
        Xs = [X_pool[labeled]] if labeled else []
        if X_task is not None:
            Xs.append(X_task)
        model = TextClassifier(labels=labels, seed=seed, prompts=prompts, **params)
        X_train = (sp.vstack(Xs, format="csr") if sp.issparse(X_pool) else np.vstack(Xs)) if Xs else None
        try:
            model.fit(None, y, sample_weight=w, featurizer=featurizer, X=X_train)
            if cfg.get("self_train"):  # weak labels from the seed's unlabeled pool (synthloop.learn.selftrain)
                unlabeled = allowed.copy()
                unlabeled[labeled] = False
                model = self_train(model, X_train, y, w, X_pool[np.flatnonzero(unlabeled)], cfg["self_train"],
                                   cfg.get("self_train_threshold", THRESHOLD))
        except SynthloopError as err:  # no two classes yet (a model without zero-shot)
            model = None
            reason = str(err)[:80]
        n = len(labeled)
        if n in BUDGETS:
            if model is None:
                curve.append({"labels": n, "accuracy": None, "macro_f1": None, "note": reason})
            else:
                pred = model.classes_[model.predict_proba_features(X_test).argmax(axis=1)]
                curve.append({"labels": n, **evaluate(data["test_y"], pred)})
        if n >= budget:
            break
        # Steps of `batch`, aligned to multiples of it (plain-tfidf starts at 2 per class).
        k = min(batch - n % batch, budget - n)
        mask = allowed.copy()
        mask[labeled] = False
        rest = np.flatnonzero(mask)
        if model is None or strategy == "random":
            picked = rng.choice(len(rest), k, replace=False)
        else:
            if callable(strategy):
                picked, _ = strategy(active.FittedView(model), X_pool[rest], k, seed=seed + rounds)
            else:
                picked, _ = active.select(strategy, model, X_pool[rest], k, seed=seed + rounds)
        labeled += list(rest[picked])
        rounds += 1
    return {"dataset": data["name"], "config": None, "strategy": strategy, "seed": seed, "pool_frac": pool_frac,
            "pool": int(allowed.sum()), "test": n_test, "curve": curve,
            "seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(_cpu() - cpu0, 2)}


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _plain_margin(classifier, X, n, seed=0):
    return active.margin(classifier, X, n)


def _strategies():
    from functools import partial

    from synthloop.learn import coldstart as cs

    # "cold-start" is the product's strategy by name (synthloop.learn.active, seeded as the loop seeds it).
    return {"margin": "margin", "entropy": "entropy", "random": "random", "cold-start": "cold-start",
            # The previous default: central picks until 2 labels per class (no bound in batches), then margin.
            "cold-start-v1": partial(cs.cold_start, batches=None, then=_plain_margin),
            # The bounded phase, then plain margin: the bound's effect alone.
            "cold-start-bounded": partial(cs.cold_start, then=_plain_margin),
            # Diverse margin over a fixed 10 * n (b10) or 50 * n (b50) most uncertain; the default widens it to
            # the pool / (1 + batches of labels) while that is more.
            "cold-start-b10": partial(cs.cold_start, then=partial(cs.diverse_margin, widen=False)),
            "cold-start-b50": partial(cs.cold_start, then=partial(cs.diverse_margin, beta=50, widen=False)),
            # Widened diverse margin from the first batch on: at 0 labels it clusters the whole pool.
            "widen-only": partial(cs.diverse_margin, widen=True),
            # Diverse margin from the first batch on (no central-pick phase).
            "diverse-margin": cs.diverse_margin,
            "cold-start-unc": partial(cs.cold_start, pick="uncertain"),
            "mix": cs.margin_and_random,
            "cold-start-mix": partial(cs.cold_start, then=cs.margin_and_random),
            "cold-start-k1": partial(cs.cold_start, k=1), "cold-start-k4": partial(cs.cold_start, k=4),
            # Central picks for exactly the first 2 batches, whatever the classes have by then.
            "cold-start-2b": partial(cs.cold_start, k=10**9)}


STRATEGY_NAMES = _strategies()


def table(path: Path, reference: str = "default/random") -> str:
    """Markdown of the runs in a JSON lines file: mean accuracy over seeds (lowest in brackets) per task and
    config/strategy; ↓r marks a cell (budget >= 50) below the reference row of the same task."""
    runs = list({(r["dataset"], r["config"], r["strategy"], r["seed"]): r
                 for r in map(json.loads, path.read_text().splitlines())}.values())
    cells: dict = {}
    for r in runs:
        for p in r["curve"]:
            if p["accuracy"] is not None:
                cells.setdefault((r["dataset"], f"{r['config']}/{r['strategy']}"), {}).setdefault(p["labels"], []).append(p["accuracy"])
    head = "| task | config/strategy | " + " | ".join(f"@{b}" for b in BUDGETS) + " | seeds |"
    lines = [head, "|---" * (len(BUDGETS) + 3) + "|"]
    for (d, key), curve in sorted(cells.items()):
        ref = cells.get((d, reference), {})
        row = []
        for b in BUDGETS:
            v = curve.get(b)
            low = " ↓r" if v and b >= 50 and ref.get(b) and key != reference and np.mean(v) < np.mean(ref[b]) else ""
            row.append(f"{np.mean(v):.3f} ({min(v):.3f}){low}" if v else "–")
        lines.append(f"| {d} | {key} | " + " | ".join(row) + f" | {max(len(v) for v in curve.values())} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", nargs="*", default=bf.SHARED_SETS)
    parser.add_argument("--configs", nargs="*", default=["tfidf-lr", "plain-tfidf"])
    parser.add_argument("--strategies", nargs="*", default=["margin", "random"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--budget", type=int, default=500)
    parser.add_argument("--batch", type=int, default=25)
    parser.add_argument("--pool-frac", type=float, default=POOL_FRAC, help="share of the pool each seed draws")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines file the runs are appended to")
    parser.add_argument("--table", action="store_true", help="print the runs in --out as a Markdown table, run nothing")
    args = parser.parse_args()
    if args.table:
        print(table(args.out))
        return
    done = set()
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            r = json.loads(line)
            done.add((r["dataset"], r["config"], r["strategy"], r["seed"], r["budget"], r.get("pool_frac", 1.0)))
    for name in args.datasets:
        data = bf.load(name)
        for config in args.configs:
            cfg = CONFIGS[config]
            feats = build(data, cfg)
            for strategy in args.strategies:
                if config == "plain-tfidf" and strategy != "margin":
                    continue  # the baseline script uses margin only
                for seed in range(args.seeds):
                    if (name, config, strategy, seed, args.budget, args.pool_frac) in done:
                        continue
                    r = run(data, feats, cfg, STRATEGY_NAMES[strategy], seed, args.budget, args.batch, args.pool_frac)
                    r.update(config=config, strategy=strategy, budget=args.budget, batch=args.batch, load=os.getloadavg())
                    with args.out.open("a") as fh:
                        fh.write(json.dumps(r) + "\n")
                    accs = " ".join(f"{p['labels']}:{p['accuracy']:.3f}" if p["accuracy"] is not None else f"{p['labels']}:-"
                                    for p in r["curve"])
                    print(f"{name:10s} {config:22s} {strategy:10s} s{seed} {accs}  ({r['seconds']}s)", flush=True)


if __name__ == "__main__":
    main()
