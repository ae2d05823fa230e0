"""Cold start: diverse first queries until every class has a few real labels, then diverse margin.

Uncertainty sampling on a model trained on a handful of labels picks outliers the model knows nothing about;
spreading the first batches over the pool (k-means on the sentence embeddings, the most central text per
cluster) finds the classes and the typical texts first. The phase is bounded in batches as well as in labels
per class: on 77 classes, "2 labels each" would take more than 500 labels of central picks, which fall behind
margin and random long before that (benchmarks/al.md).

After the phase, a batch is the most uncertain text of each k-means cluster among the most uncertain texts
(Zhdanov 2019, "diverse mini-batch active learning"): plain margin fills a batch of 25 with near-duplicates
of one confusion; one per cluster spreads it over the confusions the model has. The candidates shrink as
labels arrive (the pool / (1 + batches of real labels), at least 10 per pick): a model trained on a batch or
two is a poor judge of what it does not know (on SMS spam, 25 labels chosen among its 250 least sure texts were
22 spam and 3 ham, and accuracy fell from 0.96 to 0.95), so its early batches are spread over most of the pool.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from synthloop.learn.measures import ranked_by, top_k, uncertainty

margin = ranked_by("margin")  # what follows the diversity phase (the same strategy as active.margin)

# Real labels each class needs before the diversity phase ends ...
LABELS_PER_CLASS = 2
# ... or this many batches' worth of real labels, whichever comes first.
PHASE_BATCHES = 2
# Diverse margin clusters at least the BETA * n most uncertain texts into n clusters.
BETA = 10
# k-means runs on at most this many candidates (a random sample of a larger pool): its cost stays flat.
MAX_CANDIDATES = 20_000


def phase_done(model, k: int = LABELS_PER_CLASS, n: int = 0, batches: float | None = PHASE_BATCHES) -> bool:
    """Whether every class has k real labels, or (with batches) the model has batches * n real labels."""
    counts = getattr(model, "real_counts_", None)
    if not counts:
        return False
    return min(counts.values()) >= k or (batches is not None and sum(counts.values()) >= batches * n)


def kmeans(points, k: int, seed: int = 0, iterations: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Cluster of each point and its cosine similarity to that cluster's centre: spherical k-means,
    k-means++ seeding. A few matrix products: sklearn's
    MiniBatchKMeans took 5-15 s for 5k x 512 on a loaded 2-core machine, this takes well under one."""
    import scipy.sparse as sp

    X: Any = points.tocsr() if sp.issparse(points) else np.asarray(points, dtype=np.float64)
    norms = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel()) if sp.issparse(X) else np.linalg.norm(X, axis=1)
    X = (sp.diags(1 / np.clip(norms, 1e-12, None)) @ X) if sp.issparse(X) else X / np.clip(norms, 1e-12, None)[:, None]
    rng = np.random.default_rng(seed)
    m = X.shape[0]

    def dense(A):
        return A.toarray() if sp.issparse(A) else A

    centers = [dense(X[rng.integers(m)]).ravel()]
    closest = 1 - np.asarray(X @ centers[0]).ravel()
    for _ in range(1, k):
        p = np.clip(closest, 0, None) ** 2
        i = rng.choice(m, p=p / p.sum()) if p.sum() > 0 else rng.integers(m)
        centers.append(dense(X[i]).ravel())
        closest = np.minimum(closest, 1 - np.asarray(X @ centers[-1]).ravel())
    C = np.vstack(centers)
    for _ in range(iterations):
        labels = np.asarray(X @ C.T).argmax(axis=1)
        for c in range(k):
            members = labels == c
            if members.any():
                mean = np.asarray(X[members].mean(axis=0)).ravel()
                C[c] = mean / max(np.linalg.norm(mean), 1e-12)
    sims = np.asarray(X @ C.T)
    return sims.argmax(axis=1), sims.max(axis=1)


def cold_start(classifier, X, n: int, k: int = LABELS_PER_CLASS, seed: int = 0, pick: str = "central",
               then=None, batches: float | None = PHASE_BATCHES):
    """A modAL-style strategy: `(learner, X, n) -> (indices, scores)`; the learner wraps a fitted TextClassifier.

    While some class has fewer than k real labels (and fewer than batches * n real labels in all): k-means with
    n clusters over the pool's embeddings, and per cluster the text nearest its centre (pick="central") or the
    one the model is least sure of ("uncertain"). Afterwards `then(classifier, X, n, seed=...)` (diverse
    margin by default)."""
    model = getattr(classifier, "model", classifier)
    if phase_done(model, k, n, batches) or X.shape[0] <= n:
        return (then or diverse_margin)(classifier, X, n, seed=seed)
    rng = np.random.default_rng(seed)
    candidates = np.arange(X.shape[0])
    if len(candidates) > MAX_CANDIDATES:
        candidates = np.sort(rng.choice(candidates, MAX_CANDIDATES, replace=False))
    Xc = X[candidates]
    from synthloop.learn.models import embedding_rows

    points = embedding_rows(model.featurizer_, Xc)
    if points is None:  # a model without embeddings: cluster its own (sparse) features
        points = Xc
    scores = uncertainty("margin", classifier.predict_proba(Xc))
    clusters, closeness = kmeans(points, n, seed)
    rank = closeness if pick == "central" else scores
    picked = []
    for c in range(n):
        members = np.flatnonzero(clusters == c)
        if len(members):
            picked.append(members[np.argmax(rank[members])])
    if len(picked) < n:  # empty clusters: fill with the most uncertain of the rest
        rest = np.setdiff1d(np.arange(len(candidates)), picked)
        picked += list(rest[np.argsort(-scores[rest], kind="stable")[:n - len(picked)]])
    chosen = np.asarray(picked, dtype=int)
    return candidates[chosen], scores[chosen]


def diverse_margin(classifier, X, n: int, seed: int = 0, beta: int = BETA, widen: bool = True):
    """The most uncertain (margin) text of each of n k-means clusters over the beta * n most uncertain texts;
    clusters on the sentence embeddings (a model without them: its own features). With widen, the candidates
    are at least the pool / (1 + real labels / n): a model that has seen few batches is trusted less, so its
    batch is spread over more of the pool (benchmarks/al_explore.md: widen beat beta * n alone)."""
    scores = uncertainty("margin", classifier.predict_proba(X))
    if X.shape[0] <= n or beta <= 1:
        return margin(classifier, X, n)
    model = getattr(classifier, "model", classifier)
    m = beta * n
    if widen:
        labels = sum((getattr(model, "real_counts_", None) or {}).values())
        m = max(m, X.shape[0] * n // (labels + n))
    top, top_scores, _ = top_k(np.arange(X.shape[0]), scores, m)
    from synthloop.learn.models import embedding_rows

    points = embedding_rows(model.featurizer_, X[top])
    clusters, _ = kmeans(X[top] if points is None else points, n, seed)
    picked = [members[np.argmax(top_scores[members])] for c in range(n)
              if len(members := np.flatnonzero(clusters == c))]
    if len(picked) < n:  # empty clusters: the most uncertain of the rest (top is sorted, most uncertain first)
        picked += [i for i in range(len(top)) if i not in set(picked)][:n - len(picked)]
    chosen = np.asarray(picked, dtype=int)
    order = np.lexsort((top[chosen], -top_scores[chosen]))  # most uncertain first, as margin returns them
    return top[chosen][order], top_scores[chosen][order]


def margin_and_random(classifier, X, n: int, seed: int = 0, share: float = 0.5):
    """Half the batch by margin, the other half at random from the rest: uncertainty sampling that keeps
    seeing typical texts, so it cannot drift into a corner of the pool the model is unsure about."""
    k = round(n * share)
    top, _ = margin(classifier, X, k) if k else (np.array([], dtype=int), None)
    rest = np.setdiff1d(np.arange(X.shape[0]), np.asarray(top, dtype=int))
    extra = np.random.default_rng(seed).choice(rest, min(n - k, len(rest)), replace=False)
    picked = np.r_[np.asarray(top, dtype=int), extra]
    return picked, uncertainty("margin", classifier.predict_proba(X[picked]))
