"""Training at the speed of the labels: fit a linear model on the feature columns the labeled rows use.

A hashed or TF-IDF matrix has 10^5-10^6 columns, of which a thousand labeled texts touch a few percent. A
column that no training row uses has zero gradient from the data, so under an L2 penalty its coefficient is
exactly zero at the optimum: fitting on the used columns alone and writing the coefficients back into a
full-width, otherwise zero, matrix gives the same model (to solver tolerance) at a fraction of the cost (the
solver's work per iteration scales with the width of the coefficient matrix). The fitted estimator is
left as it would be after a full fit, full-width coefficients and `n_features_in_` included, so it scores
any row of the featurizer without a column selection per call, and saved models look the same as before.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp


def linear_parts(estimator) -> list:
    """The fitted linear models inside an estimator: itself, or each fold's model of a CalibratedClassifierCV."""
    if hasattr(estimator, "calibrated_classifiers_"):
        return [c.estimator for c in estimator.calibrated_classifiers_]
    return [estimator] if hasattr(estimator, "coef_") else []


def fit_used_columns(estimator, X, y, sample_weight=None):
    """`estimator.fit(X, y)` on the columns of sparse X that some row uses, expanded back to X's full width.

    Dense X, or one that uses most of its columns, is fitted as it is. Returns the fitted estimator."""
    if not sp.issparse(X):
        return estimator.fit(X, y, sample_weight=sample_weight)
    X = sp.csr_matrix(X)
    used = np.unique(X.indices)
    width = X.shape[1]
    if len(used) > 0.5 * width:
        return estimator.fit(X, y, sample_weight=sample_weight)
    estimator.fit(X[:, used], y, sample_weight=sample_weight)
    return widen(estimator, used, width)


def widen(estimator, used, width: int):
    """An estimator fitted on columns `used` of a `width`-column matrix, made to score the full width: its
    coefficients written back into zeros (the unused columns' coefficients are zero at the optimum)."""
    for part in linear_parts(estimator):
        full = np.zeros((part.coef_.shape[0], width), dtype=part.coef_.dtype)
        full[:, used] = part.coef_
        part.coef_ = full
        part.n_features_in_ = width
    estimator.n_features_in_ = width
    return estimator
