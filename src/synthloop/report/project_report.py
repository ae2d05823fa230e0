"""The report: what labeling bought (learning curves, per-class scores, label quality) and what the
compact model saves against calling GPT-4o for every prediction. One self-contained HTML file, plus
Markdown and JSON twins with the same numbers."""

from __future__ import annotations

import inspect
import json
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from threadpoolctl import threadpool_limits

from synthloop.config import Config
from synthloop.errors import SynthloopError
from synthloop.report import plots
from synthloop.report.context import ReportContext
from synthloop.report.impact import counterfactual, llm_totals, measure_model_latency
from synthloop.report.nightly_report import recent_runs
from synthloop.store import RoundRow, Store, as_dicts

if TYPE_CHECKING:
    from synthloop.learn.models import TextClassifier

SUSPICIOUS_MAX = 50
REVIEW_TOP = 10  # the lowest-scored labels shown even when none is flagged


def build_report(ctx: ReportContext, out_dir: str | Path | None = None, baselines: dict[str, list[dict]] | None = None,
                 measure_latency: bool = True, measure_co2: bool = True, country_iso_code: str = "USA",
                 project_label: str | None = None) -> dict:
    """Write report.html, report.md and report.json; return the JSON data with a "paths" entry.
    project_label replaces the project's folder where that folder means nothing (a simulation's temporary one)."""
    rounds = ctx.store.rounds()
    if not rounds:
        raise SynthloopError("no rounds yet; run `synthloop round` first")
    try:
        version, model = ctx.load_model(None)
    except SynthloopError:
        raise SynthloopError("no model yet; run `synthloop round` first") from None
    baselines = {name: [p for p in curve if p.get("accuracy") is not None] for name, curve in (baselines or {}).items()}
    out = Path(out_dir) if out_dir is not None else ctx.state_dir / "reports"
    if out.exists() and not out.is_dir():
        raise SynthloopError(f"{out} is a file; --out names the folder the report is written to (give a new or "
                             "existing folder)")
    out.mkdir(parents=True, exist_ok=True)

    scored = [(r.number, r.metrics) for r in rounds if r.metrics and r.metrics.get("accuracy") is not None]
    curve = [{"round": number, "labels": m.get("n_labels", 0), "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}
             for number, m in scored]
    tracker = _co2_start(country_iso_code) if measure_co2 else "turned off"
    # One BLAS thread: these small fits and single predictions gain nothing from more, and on a busy
    # machine OpenBLAS's spinning threads make them tens of times slower.
    try:
        with threadpool_limits(1):
            quality = label_quality(ctx.store, ctx.config, ctx.new_model, model)
            latency = measure_model_latency(ctx.store, ctx.task, model) if measure_latency else None
    finally:
        co2 = _co2_stop(tracker, rounds)  # also stops codecarbon's sampling thread when something failed
    llm = _llm_spend(ctx.store, rounds)
    data = {
        "project": project_label or str(ctx.root), "task": ctx.task.name, "model_version": version,
        "generated_at": time.strftime("%Y-%m-%d %H:%M:%S"), "rounds": len(rounds),
        "curve": curve, "summary": _summary(curve, baselines), "baselines": baselines,
        "per_class_f1": {"labels": [p["labels"] for p in curve],
                         "f1": {lab: [m.get("per_class", {}).get(lab, {}).get("f1") for _, m in scored]
                                for lab in ctx.task.label_names}},
        "latest": None if not scored else {"round": scored[-1][0], "per_class": scored[-1][1]["per_class"],
                                           "confusion": scored[-1][1]["confusion"]},
        "labels_by_source": _labels_by_source(ctx.store),
        "per_round": _per_round(ctx.store, rounds),
        "synthetic_added": _synthetic_added(ctx.store, rounds),
        "monitor": [_monitor_row(r) for r in rounds if r.metrics and (r.metrics.get("pool") or r.metrics.get("stopping"))],
        "llm": llm, "label_quality": quality, "latency": latency, "co2": co2,
        "runs": recent_runs(ctx.store, 20),  # the nightly job's, newest last
    }
    data["counterfactual"] = counterfactual(ctx.store, ctx.config, latency, llm["total_cost"])
    blocks = plots.blocks(data, ctx.task.label_names)
    paths = {"html": out / "report.html", "md": out / "report.md", "json": out / "report.json"}
    paths["html"].write_text(plots.to_html(blocks, ctx.task.name), encoding="utf-8")
    paths["md"].write_text(plots.to_markdown(blocks, ctx.task.name), encoding="utf-8")
    data["paths"] = {k: str(v) for k, v in paths.items()}
    paths["json"].write_text(json.dumps(data, indent=2, allow_nan=False, default=str), encoding="utf-8")
    return data


# numbers ----------------------------------------------------------------------------------------
def _at(curve: list[dict], labels: int, key: str = "accuracy") -> float | None:
    """A curve's score at a label count, linearly interpolated; None outside its range."""
    pts = sorted((p["labels"], p[key]) for p in curve if p.get(key) is not None)
    if not pts or labels < pts[0][0] or labels > pts[-1][0]:
        return None
    return float(np.interp(labels, [x for x, _ in pts], [y for _, y in pts]))


def _summary(curve: list[dict], baselines: dict[str, list[dict]]) -> dict:
    if not curve:
        return {}
    first, last = curve[0], curve[-1]
    out = {"first": first, "last": last, "accuracy_gain": last["accuracy"] - first["accuracy"], "vs": {}}
    for name, base in baselines.items():
        reached = next((p["labels"] for p in sorted(base, key=lambda p: p["labels"]) if p["accuracy"] >= last["accuracy"]), None)
        at_same = _at(base, last["labels"])
        out["vs"][name] = {"accuracy_at_same_labels": at_same,
                           "difference": None if at_same is None else last["accuracy"] - at_same,
                           "labels_to_reach_same_accuracy": reached,
                           "labels_saved": None if reached is None else reached - last["labels"]}
    return out


def _monitor_row(r: RoundRow) -> dict:
    m = r.metrics or {}  # the report keeps the rounds that have metrics
    pool, stop = m.get("pool") or {}, m.get("stopping") or {}
    return {"round": r.number, "labels": m.get("n_labels", 0), "mean_margin": pool.get("mean_margin"),
            "mean_entropy": pool.get("mean_entropy"), "pool_n": pool.get("n"), "kappa": stop.get("kappa"),
            "stable_rounds": stop.get("stable_rounds"), "kappa_threshold": stop.get("threshold"),
            "window": stop.get("window"), "should_stop": stop.get("should_stop")}


def _labels_by_source(store: Store) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for source, label, n in sorted(store.label_counts()):
        out.setdefault(source, {})[label] = n
    return out


def _round_of(label_round: int | None, created_at: float, rounds: list[RoundRow]) -> int:
    """The round a label arrived in. Imports, `synthloop generate` and the top-up store labels without a
    round: those belong to the first round that finished after them (round 0 trains on an import made
    before it); anything stored after the last round finished is counted in the last one."""
    if label_round is not None:
        return label_round
    for r in rounds:
        if r.finished_at is None or created_at <= r.finished_at:
            return r.number
    return rounds[-1].number


def _add(counts: dict[str, dict[str, int]], source: str, label: str, n: int = 1) -> None:
    counts.setdefault(source, {})[label] = counts.get(source, {}).get(label, 0) + n


def _labels_per_round(store: Store, rounds: list[RoundRow]) -> dict[int, dict]:
    """Per round: labels by source and class that arrived in it, and all stored by its end (the latest
    round's total is every label stored now, the same as labels_by_source)."""
    added: dict[int, dict[str, dict[str, int]]] = {r.number: {} for r in rounds}
    for event in store.label_history():
        _add(added.setdefault(_round_of(event.round, event.created_at, rounds), {}), event.source, event.label)
    out: dict = {}
    total: dict = {}
    for number in sorted(added):
        for source, by_label in added[number].items():
            for label, n in by_label.items():
                _add(total, source, label, n)
        out[number] = {"added": _sorted(added[number]), "total": _sorted(total)}
    return out


def _sorted(counts: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    return {src: dict(sorted(c.items())) for src, c in sorted(counts.items())}


def _per_round(store: Store, rounds: list[RoundRow]) -> list[dict]:
    """Every round's test scores and confusion matrix (None where it was not scored) and its labels."""
    by_round = _labels_per_round(store, rounds)
    out = []
    for r in rounds:
        m = r.metrics or {}
        labels = by_round.get(r.number, {"added": {}, "total": {}})
        out.append({"round": r.number, "labels": m.get("n_labels", 0), "accuracy": m.get("accuracy"),
                    "macro_f1": m.get("macro_f1"), "per_class": m.get("per_class"), "confusion": m.get("confusion"),
                    "labels_added": labels["added"], "labels_total": labels["total"]})
    return out


def _synthetic_added(store: Store, rounds: list[RoundRow]) -> list[dict]:
    """Synthetic examples per class: per round from the top-up counts the round recorded, and under round
    None the stored synthetic labels those do not account for (`synthloop generate`, the seed data)."""
    per_round = [{"round": r.number, **(r.counts or {}).get("synthetic_added", {})}
                 for r in rounds if (r.counts or {}).get("synthetic_added")]
    stored: dict[str, int] = defaultdict(int)
    for source, label, n in store.label_counts():
        if source.startswith("synthetic"):
            stored[label] += n
    outside = {label: n - sum(r.get(label, 0) for r in per_round) for label, n in sorted(stored.items())}
    outside = {label: n for label, n in outside.items() if n > 0}
    return ([{"round": None, **outside}] if outside else []) + per_round


def _llm_spend(store: Store, rounds: list[RoundRow]) -> dict:
    usage = store.llm_usage()
    totals = llm_totals(usage)
    per_round = []
    for r in rounds:
        spent = store.llm_usage(round_=r.number)
        per_round.append({"round": r.number, **{p: sum(x.cost or 0 for x in spent if x.purpose == p)
                                                    for p in totals["by_purpose"]}})
    return {"usage": as_dicts(usage), "per_round": per_round, **totals}


# label quality ----------------------------------------------------------------------------------
def llm_human_agreement(store: Store) -> dict:
    """Where an example has both an LLM label and a human label: how often they agree."""
    by_example: dict[str, dict] = defaultdict(lambda: {"llm": [], "human": []})
    for row in store.example_labels():
        kind = row.source.split(":", 1)[0]
        if kind in ("llm", "human"):
            by_example[row.example_id][kind].append((row.source, row.label))
            by_example[row.example_id]["text"] = row.text
    pairs = [(eid, e["text"], h, s, lab) for eid, e in by_example.items() if e["human"] and e["llm"]
             for s, lab in e["llm"] for _, h in e["human"][:1]]
    if not pairs:
        return {"n": 0, "note": "no example has both an LLM label and a human label"}
    human, llm = [p[2] for p in pairs], [p[4] for p in pairs]
    agree = sum(h == m for h, m in zip(human, llm)) / len(pairs)
    kappa = None
    if len(set(human) | set(llm)) > 1:
        from sklearn.metrics import cohen_kappa_score

        value = float(cohen_kappa_score(human, llm))
        kappa = None if math.isnan(value) else value
    return {"n": len(pairs), "agreement": agree, "kappa": kappa,
            "disagreements": [{"id": eid, "text": text, "human": h, "llm": lab, "llm_source": s}
                              for eid, text, h, s, lab in pairs if h != lab][:SUSPICIOUS_MAX]}


def label_quality(store: Store, config: Config, new_model: Callable[[], TextClassifier], model: TextClassifier) -> dict:
    """Out-of-fold probabilities of the project's model type over the real labels, then the labels most
    worth a second look: cleanlab's find_label_issues first, then the lowest cleanlab label-quality scores
    (without cleanlab: disagreements with the prediction, then the lowest probability of the given label)."""
    from sklearn.model_selection import StratifiedKFold

    result: dict = {"agreement": llm_human_agreement(store), "suspicious": []}
    task = config.task
    rows = store.training_set()
    real = [r for r in rows if r.real]
    extra = [(r.text, r.label) for r in rows if not r.real] + task.examples()
    given = np.array([r.label for r in real], dtype=object)
    present, counts = np.unique(given, return_counts=True) if len(given) else (np.array([]), np.array([0]))
    folds = int(min(5, min(counts)))
    if len(present) < 2 or folds < 2:
        result["note"] = "needs at least two real labels in each of two classes; label more, then rerun"
        return result
    # The featurizer learned no labels (TF-IDF vocabulary or embeddings), so reusing it leaks nothing.
    texts = [r.text for r in real]
    X, X_extra = model.transform(texts), model.transform([t for t, _ in extra]) if extra else None
    weight = config.model.synthetic_weight
    # Columns that are zero in every row keep a zero weight in an L2 logistic regression: dropping them
    # gives the same model, many times faster (most of a 100k-column TF-IDF space is unused here).
    import scipy.sparse as sp

    stacked = X if X_extra is None else (sp.vstack([X, X_extra]) if sp.issparse(X) else np.vstack([X, X_extra]))
    used = np.flatnonzero(np.asarray(abs(stacked).sum(axis=0)).ravel())
    X, X_extra = X[:, used], None if X_extra is None else X_extra[:, used]
    proba = np.zeros((len(real), len(task.label_names)))
    for train, test in StratifiedKFold(folds, shuffle=True, random_state=config.loop.seed).split(texts, given):
        clf = new_model()
        # Calibration only rescales each class's scores; cleanlab's per-class thresholds already adapt to
        # that scale, and skipping it makes k fits instead of 3k.
        clf.calibrate = False
        X_fit, y_fit, w = X[train], list(given[train]), [1.0] * len(train)
        if X_extra is not None:
            X_fit = sp.vstack([X_fit, X_extra]).tocsr() if sp.issparse(X_fit) else np.vstack([X_fit, X_extra])
            y_fit, w = y_fit + [lab for _, lab in extra], w + [weight] * len(extra)
        clf.fit([], y_fit, sample_weight=np.asarray(w), featurizer=model.featurizer_, X=X_fit)
        proba[test] = clf.predict_proba_features(X[test])
    names = list(task.label_names)
    y = np.array([names.index(lab) for lab in given])
    predicted = proba.argmax(axis=1)
    self_conf = proba[np.arange(len(y)), y]
    try:
        from cleanlab.filter import find_label_issues
        from cleanlab.rank import get_label_quality_scores

        # cleanlab wants every class of pred_probs among the labels: keep the classes present.
        cols = [names.index(c) for c in present]
        p = proba[:, cols] / np.clip(proba[:, cols].sum(axis=1, keepdims=True), 1e-12, None)
        y_present = np.array([cols.index(v) for v in y])
        flagged = set(find_label_issues(y_present, p, return_indices_ranked_by="self_confidence").tolist())
        # Adjusted by each class's typical confidence, so a class the model is unsure of overall does not
        # crowd the top of the list; cleanlab's filter rarely fires on a few dozen labels, the ranking still helps.
        score = get_label_quality_scores(y_present, p, method="self_confidence", adjust_pred_probs=True)
        method = "cleanlab: label quality score (class-adjusted self-confidence), find_label_issues flags"
    except (ImportError, ValueError) as err:  # not installed, or a class layout cleanlab refuses
        flagged, score = set(np.flatnonzero(predicted != y).tolist()), self_conf
        method = "out-of-fold probability of the given label" + (
            " (install cleanlab for its confident-learning filter)" if isinstance(err, ImportError) else "")
    ranked = sorted(range(len(real)), key=lambda i: (i not in flagged, score[i]))
    shown = ranked[:min(SUSPICIOUS_MAX, max(REVIEW_TOP, len(flagged)))]
    result.update({
        "method": method, "folds": folds, "n_checked": len(real),
        "out_of_fold_agreement": float((predicted == y).mean()), "n_flagged": len(flagged),
        "suspicious": [{"id": real[i].example_id, "text": real[i].text, "given": real[i].label, "source": real[i].source,
                        "predicted": names[predicted[i]], "score": float(score[i]), "p_given": float(self_conf[i]),
                        "flagged": i in flagged} for i in shown],
    })
    return result


# cost and impact: the shared numbers live in synthloop.report.impact -------------------------------------
def _co2_start(country: str):
    try:
        from codecarbon import OfflineEmissionsTracker
        from codecarbon.emissions_tracker import BaseEmissionsTracker
    except ImportError:
        return "codecarbon is not installed (pip install codecarbon)"
    logging.getLogger("codecarbon").setLevel(logging.ERROR)
    try:
        # Nothing written to disk: codecarbon >= 3.3 takes output_methods, older versions save_to_file.
        quiet: dict[str, Any] = ({"output_methods": []} if "output_methods" in inspect.signature(BaseEmissionsTracker).parameters
                 else {"save_to_file": False})
        tracker = OfflineEmissionsTracker(country_iso_code=country, log_level="error", tracking_mode="process",
                                          allow_multiple_runs=True, **quiet)
        tracker.start()
        return tracker
    except Exception as err:  # codecarbon fails in many machine-specific ways; the report goes on without it
        return f"codecarbon could not measure here: {type(err).__name__}"


def _co2_stop(tracker, rounds: list[RoundRow]) -> dict:
    if isinstance(tracker, str):
        return {"estimate": True, "note": tracker}
    try:
        tracker.stop()
        d = tracker.final_emissions_data
    except Exception as err:
        return {"estimate": True, "note": f"codecarbon could not measure here: {type(err).__name__}"}
    if not d.duration or not d.energy_consumed:
        return {"estimate": True, "note": "codecarbon recorded no energy here"}
    watts = 3_600_000 * d.energy_consumed / d.duration
    kg_per_kwh = d.emissions / d.energy_consumed
    train_s = sum((r.timings or {}).get("train", 0.0) for r in rounds)
    return {"estimate": True, "country": d.country_iso_code, "cpu_model": d.cpu_model,
            "measured_seconds": d.duration, "measured_kwh": d.energy_consumed, "measured_kg_co2": d.emissions,
            "average_watts": watts, "kg_co2_per_kwh": kg_per_kwh, "training_seconds": train_s,
            "training_kwh": watts * train_s / 3_600_000, "training_kg_co2": watts * train_s / 3_600_000 * kg_per_kwh,
            "note": ("codecarbon (offline, process mode) over this report's k-fold refits and latency benchmark; the "
                     "loop's training is that average power times the training time stored per round")}
