"""Compact models: a featurizer plus a logistic regression, saved as one file per version.

`hybrid-lr` (the default) puts TF-IDF (word and character n-grams) and a sentence embedding side by side in
one sparse matrix; with the task's label names, descriptions and examples embedded as prototypes it also
classifies with no real labels at all (zero-shot), and leans on those prototypes less as labels arrive.
benchmarks/al.md holds the measurements behind each choice.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import joblib
import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.feature_extraction.text import HashingVectorizer, TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import FeatureUnion

from synthloop import old_paths
from synthloop.config import STATE_DIR
from synthloop.errors import SynthloopError
from synthloop.textcap import TextCap, cap_texts

MODEL_NAMES = ("hybrid-lr", "tfidf-lr", "hashing-lr", "embed-lr")
# What a model uses when its config leaves embed_model / calibrate unset (None). Measured in benchmarks/al.md:
# USE embeds ~13x cheaper than MiniLM; calibration (3-fold sigmoid) on 2-3 labels per class flattens the
# probabilities and made round 0 and margin's first picks worse.
DEFAULT_EMBED_MODEL = {"hybrid-lr": "use-multilingual", "embed-lr": "all-MiniLM-L6-v2"}
DEFAULT_CALIBRATE = {"hybrid-lr": False}
# Weight of the zero-shot prior, in rows per class: with 2, the prototypes count as much as 2 labels per class.
DEFAULT_PRIOR = {"hybrid-lr": 2.0}
# Zero-shot: softmax temperature over cosine similarities to the label prototypes.
ZERO_SHOT_TEMPERATURE = 0.05


def _tfidf(max_chars: int | None = None):
    cap = TextCap(max_chars) if max_chars else None  # [limits] max_text_chars: every route in is capped
    return FeatureUnion([
        ("word", TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, max_features=50_000, preprocessor=cap)),
        ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True, max_features=50_000,
                                 preprocessor=cap)),
    ])


class HybridFeaturizer(TransformerMixin, BaseEstimator):
    """TF-IDF columns, then the sentence embedding times `embed_weight` (sparse CSR, float64).

    Each TF-IDF block has unit norm and so has the embedding: the weight sets how much the logistic
    regression's penalty lets the embedding count against the n-grams."""

    max_chars: int | None = None  # a featurizer saved before the cap existed has none

    def __init__(self, embed_model: str = "use-multilingual", embed_weight: float = 2.0, store: str | None = None,
                 max_chars: int | None = None):
        self.embed_model = embed_model
        self.embed_weight = embed_weight
        self.store = store
        self.max_chars = max_chars

    def _embedder(self):
        from synthloop.learn.embed import SentenceEmbedder

        key = (self.embed_model, self.store)
        cached = getattr(self, "_embedder_cache", None)
        if cached is None or cached[0] != key:  # one ONNX session per featurizer, rebuilt after set_params
            cached = self._embedder_cache = (key, SentenceEmbedder(model=self.embed_model, store=self.store))
        return cached[1]

    def __getstate__(self):
        return {k: v for k, v in super().__getstate__().items() if k != "_embedder_cache"}

    def fit(self, texts, y=None):
        self.tfidf_ = _tfidf(self.max_chars).fit(list(texts))
        for _, vectorizer in self.tfidf_.transformer_list:
            vectorizer.stop_words_ = None  # the terms cut by max_features: large, only kept for introspection
        return self

    def embed(self, texts) -> np.ndarray:
        return self._embedder().transform(cap_texts(texts, self.max_chars))

    def transform(self, texts):
        texts = cap_texts(texts, self.max_chars)
        if not texts:  # TfidfTransformer refuses zero rows
            width = sum(len(v.vocabulary_) for _, v in self.tfidf_.transformer_list)
            return self.combine(sp.csr_matrix((0, width)), np.zeros((0, _embedding_dim(None, self))))
        return self.combine(self.tfidf_.transform(texts), self.embed(texts))

    def combine(self, tfidf, embeddings):
        return sp.hstack([tfidf, sp.csr_matrix(self.embed_weight * np.asarray(embeddings))], format="csr")

    def embedding_block(self, X) -> np.ndarray:
        """The (unit-norm) embedding columns of a transformed matrix."""
        return np.asarray(X[:, -_embedding_dim(X, self):].toarray()) / self.embed_weight


def _embedding_dim(X, featurizer) -> int:
    dim = getattr(featurizer, "embedding_dim_", None)
    if dim is None:
        dim = featurizer.embedding_dim_ = featurizer.embed(["a"]).shape[1]
    return dim


def make_featurizer(name: str, embed_model: str | None = None, store: str | None = None,
                    embed_weight: float = 2.0, max_chars: int | None = None):
    """The featurizer of a model; max_chars ([limits] max_text_chars) caps every text it is given."""
    embed_model = embed_model or DEFAULT_EMBED_MODEL.get(name, "all-MiniLM-L6-v2")
    if name == "tfidf-lr":
        return _tfidf(max_chars)
    if name == "hashing-lr":
        # No vocabulary to fit: any worker can vectorize any chunk of a pool of any size.
        return HashingVectorizer(ngram_range=(1, 2), n_features=2**20, alternate_sign=False, norm="l2",
                                 preprocessor=TextCap(max_chars) if max_chars else None)
    if name == "embed-lr":
        from synthloop.learn.embed import SentenceEmbedder

        return SentenceEmbedder(model=embed_model, store=store, max_chars=max_chars)
    if name == "hybrid-lr":
        return HybridFeaturizer(embed_model=embed_model, embed_weight=embed_weight, store=store, max_chars=max_chars)
    raise SynthloopError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def featurizer_needs_fit(name: str) -> bool:
    return name in ("tfidf-lr", "hybrid-lr")


def embedding_rows(featurizer, X) -> np.ndarray | None:
    """The unit-norm sentence embeddings inside a feature matrix, or None for a model without them."""
    return featurizer.embedding_block(X) if hasattr(featurizer, "embedding_block") else None


def embed_texts(featurizer, texts) -> np.ndarray | None:
    return featurizer.embed(list(texts)) if hasattr(featurizer, "embed") else None


def label_prompts(spec) -> dict[str, list[str]]:
    """What the task says about each label, as texts to embed: its name (underscores as spaces), the name with
    its description, and its examples. Zero-shot prototypes are built from these."""
    prompts = {}
    for label in spec.labels:
        name = label.name.replace("_", " ").replace("-", " ").strip()
        texts = [name] + ([f"{name}: {label.description.strip()}"] if label.description.strip() else [])
        prompts[label.name] = texts + [t for t in label.examples if t.strip()]
    return prompts


def model_options(task, state_dir) -> dict:
    """What a project's models get beyond ModelConfig: the label prompts (zero-shot) and the feature store."""
    return {"prompts": label_prompts(task), "feature_dir": str(Path(state_dir) / "features")}


def texts_key(texts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for text in texts:
        digest.update(text.encode("utf-8", "surrogatepass"))
        digest.update(b"\0")
    return digest.hexdigest()


class TextClassifier(ClassifierMixin, BaseEstimator):
    """Texts in, class probabilities out, with a column for every task label.

    `fit` accepts an already fitted featurizer (and its rows) so a loop can reuse one across rounds. With
    `prompts` (label -> texts describing it, see label_prompts) and a model that embeds, the labels' mean
    embeddings are prototypes: with no real label (rows of weight 1.0) the model is zero-shot (cosine
    similarity to the prototypes), and otherwise its probabilities are blended with the zero-shot ones at
    weight prior / (prior + rows per class), so the prior fades as labels arrive.
    """

    def __init__(self, labels: Sequence[str] = (), name: str = "tfidf-lr", C: float = 4.0,
                 calibrate: bool | None = True, embed_model: str | None = None, seed: int = 0,
                 class_weight: str | None = "balanced", prompts: dict | None = None, prior: float | None = None,
                 embed_weight: float = 2.0, feature_dir: str | None = None, max_chars: int | None = None):
        self.labels = labels
        self.name = name
        self.C = C
        self.calibrate = calibrate
        self.embed_model = embed_model
        self.seed = seed
        self.class_weight = class_weight
        self.prompts = prompts
        self.prior = prior
        self.embed_weight = embed_weight
        self.feature_dir = feature_dir
        self.max_chars = max_chars  # [limits] max_text_chars: what the featurizer sees of each text (None: all)

    max_chars: int | None = None  # a model saved before the cap existed has none

    def _embed_model(self) -> str:
        return self.embed_model or DEFAULT_EMBED_MODEL.get(self.name, "all-MiniLM-L6-v2")

    def _calibrate(self) -> bool:
        return DEFAULT_CALIBRATE.get(self.name, True) if self.calibrate is None else self.calibrate

    def fit_featurizer(self, texts: Sequence[str]):
        featurizer = make_featurizer(self.name, self._embed_model(), self.feature_dir, self.embed_weight, self.max_chars)
        if featurizer_needs_fit(self.name):
            featurizer.fit(list(texts))
            for _, vectorizer in getattr(featurizer, "transformer_list", ()):
                # The terms cut by max_features: large, and only kept for introspection.
                vectorizer.stop_words_ = None
        return featurizer

    def fit(self, texts, y, sample_weight=None, featurizer=None, X=None):
        y = np.asarray(y, dtype=object)
        present = sorted(set(y))
        self.classes_ = np.asarray(list(self.labels) or present, dtype=object)
        unknown = set(present) - set(self.classes_)
        if unknown:
            raise SynthloopError(f"labels {sorted(unknown)} are not in the task; add them to the task or fix the data")
        if len(present) < 2 and not self.prompts:
            self._refuse(present)
        self.featurizer_ = featurizer if featurizer is not None else self.fit_featurizer(texts)
        self.prototypes_ = self._prototypes()
        weights = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
        # Real labels weigh 1.0, task examples and synthetic rows less (see Project.training_data).
        self.real_counts_ = {c: int(((y == c) & (weights >= 1.0)).sum()) for c in self.classes_}
        self.rows_per_class_ = len(y) / max(len(self.classes_), 1)
        if self.prototypes_ is not None and (len(present) < 2 or not sum(self.real_counts_.values())):
            # Zero-shot until the first real label: the prototypes already hold the task's examples, and
            # beat a regression fitted on them alone (benchmarks/al.md, round 0).
            self.clf_ = None
            return self
        if len(present) < 2:
            self._refuse(present)
        if X is None:
            X = self.featurizer_.transform(list(texts))
        base = LogisticRegression(C=self.C, max_iter=2000, class_weight=self.class_weight)
        _, counts = np.unique(y, return_counts=True)
        folds = min(3, int(counts.min()))
        if self._calibrate() and folds >= 2:
            cv = StratifiedKFold(folds, shuffle=True, random_state=self.seed)
            self.clf_ = CalibratedClassifierCV(base, method="sigmoid", cv=cv)
        else:
            # Too few examples per class to hold some out: the plain logistic model is already probabilistic.
            self.clf_ = clone(base)
        from synthloop.learn.sparse_fit import fit_used_columns

        fit_used_columns(self.clf_, X, y, sample_weight)  # on the columns the labeled rows use: same model, faster
        seen = list(self.clf_.classes_)
        self.columns_ = np.array([seen.index(c) if c in seen else -1 for c in self.classes_])
        return self

    @staticmethod
    def _refuse(present):
        raise SynthloopError(
            f"training needs labeled examples of at least two classes, got {present or 'none'}; "
            "add examples to the task's labels, import labels, or generate synthetic data"
        )

    def _prototypes(self) -> np.ndarray | None:
        if not self.prompts:
            return None
        texts, owners = [], []
        for label in self.classes_:
            for text in self.prompts.get(label, []):
                texts.append(text)
                owners.append(label)
        vectors = embed_texts(self.featurizer_, texts) if texts else None
        if vectors is None or not len(vectors):
            return None
        owner_of = np.asarray(owners, dtype=object)
        protos = np.zeros((len(self.classes_), vectors.shape[1]))
        for k, label in enumerate(self.classes_):
            mine = vectors[owner_of == label]
            if len(mine):
                protos[k] = mine.mean(axis=0)
        return protos / np.clip(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12, None)

    def zero_shot_proba(self, X) -> np.ndarray:
        emb = embedding_rows(self.featurizer_, X)
        logits = (emb @ self.prototypes_.T) / ZERO_SHOT_TEMPERATURE
        logits[:, np.abs(self.prototypes_).sum(axis=1) == 0] = -np.inf  # a label with no text to embed
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(axis=1, keepdims=True)

    def transform(self, texts):
        return self.featurizer_.transform(list(texts))

    def predict_proba_features(self, X) -> np.ndarray:
        prototypes = getattr(self, "prototypes_", None)
        clf = self.clf_
        if clf is None:
            return self.zero_shot_proba(X)
        raw = clf.predict_proba(X)  # full-width coefficients (synthloop.learn.sparse_fit): any featurizer row scores as it is
        proba = np.zeros((raw.shape[0], len(self.classes_)))
        known = self.columns_ >= 0
        proba[:, known] = raw[:, self.columns_[known]]
        prior = DEFAULT_PRIOR.get(self.name, 0.0) if self.prior is None else self.prior
        if prototypes is not None and prior > 0:
            a = prior / (prior + self.rows_per_class_)
            proba = (1 - a) * proba + a * self.zero_shot_proba(X)
        return proba

    def predict_proba(self, texts) -> np.ndarray:
        return self.predict_proba_features(self.transform(texts))

    def predict(self, texts) -> np.ndarray:
        return self.classes_[self.predict_proba(texts).argmax(axis=1)]

    def predict_rows(self, texts: list[str], version: int) -> list[dict]:
        """`prediction_rows` for these texts under this model (saved as `version`)."""
        return prediction_rows(texts, self.predict_proba(texts), self.classes_, version)


def prediction_rows(texts: Sequence[str], proba, classes, version: int) -> list[dict]:
    """What a prediction is, wherever it is made (Project.predict, `synthloop predict`, the server): per text,
    its label, that label's probability, every label's, and the model version."""
    labels = [str(c) for c in classes]
    return [{"text": text, "label": labels[int(p.argmax())], "probability": float(p.max()),
             "probabilities": dict(zip(labels, map(float, p))), "model_version": version}
            for text, p in zip(texts, proba)]


# A project keeps its embedding store in STATE_DIR/features, beside STATE_DIR/models. Model files name it
# relative to the state dir they are in, so a copied or moved project (or another machine's folder on a shared
# store) uses its own store, never the folder it was trained in.
FEATURES = "features"


def _saved_store(store: str | None, state_dir: Path) -> str | None:
    if store and Path(store).resolve() == (state_dir / FEATURES).resolve():
        return FEATURES
    return store


def _loaded_store(store: str | None, state_dir: Path) -> str | None:
    if not store:
        return store
    where = Path(store)
    if not where.is_absolute():
        return str(state_dir / where)
    if where.parts[-2:] == (STATE_DIR, FEATURES) and state_dir.name == STATE_DIR:
        return str(state_dir / FEATURES)  # saved with an absolute path by synthloop before 2026-12-02
    return store


def _with_store(obj, attr: str, store: str | None):
    """A shallow copy of obj with another store path, for writing: the live object may be in use elsewhere."""
    if getattr(obj, attr, None) == store:
        return obj
    obj = copy.copy(obj)
    setattr(obj, attr, store)
    return obj


def save_model(model: TextClassifier, path: Path) -> None:
    """Write the classifier, and its featurizer once beside it: versions that share a featurizer share
    the file. Temporary file plus rename, so a crash never leaves a half-written model."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dir = path.parent.parent
    featurizer = model.featurizer_
    key = getattr(model, "featurizer_key_", None) or str(id(featurizer))
    name = f"featurizer-{hashlib.sha1(key.encode()).hexdigest()[:16]}.joblib"
    if not (path.parent / name).exists():
        _atomic_dump(_with_store(featurizer, "store", _saved_store(getattr(featurizer, "store", None), state_dir)),
                     path.parent / name)
    model.featurizer_file_ = name
    saved = _with_store(model, "feature_dir", _saved_store(model.feature_dir, state_dir))
    if saved is model:
        saved = copy.copy(model)
    saved.featurizer_ = None
    _atomic_dump(saved, path)


def _atomic_dump(obj, path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    joblib.dump(obj, tmp)
    os.replace(tmp, path)


@lru_cache(maxsize=4)
def _load_featurizer(path: Path):
    old_paths.install()
    featurizer = joblib.load(path)
    if getattr(featurizer, "store", None):
        featurizer.store = _loaded_store(featurizer.store, Path(path).parent.parent)
    return featurizer


def load_model(path: str | Path) -> TextClassifier:
    path = Path(path)
    if not path.is_file():
        raise SynthloopError(f"model file {path} is missing; run `synthloop train` to make a new version")
    old_paths.install()
    try:
        model = joblib.load(path)
    except Exception as err:  # noqa: BLE001 - truncated or overwritten: pickle says so in many ways
        raise SynthloopError(f"model file {path} is damaged ({type(err).__name__}); run `synthloop train` to make a "
                             "new version from the labels in the store") from None
    model.feature_dir = _loaded_store(getattr(model, "feature_dir", None), path.parent.parent)
    if model.featurizer_ is None:
        model.featurizer_ = _load_featurizer(path.parent / model.featurizer_file_)
    used = vars(model).pop("used_columns_", None)
    if used is not None:  # saved before 2026-12-01, fitted on a column slice: widen it once, as fits are now
        from synthloop.learn.sparse_fit import widen

        widen(model.clf_, used, model.transform(["a"]).shape[1])
    return model
