"""`synthloop status` as data: what a project holds, what it cost, and its newest metrics."""

from __future__ import annotations

from synthloop.report.context import ReportContext
from synthloop.store import ModelRow, RoundRow, as_dicts


def metrics_summary(last_round: RoundRow | None, model: ModelRow | None) -> dict | None:
    """The newest metrics and what they cover: the latest model's own (trained on every label after a loop),
    else those of the last round that has them; n_labels says how many real labels that model saw."""
    keys = ("n_labels", "accuracy", "macro_f1")
    if model and model.metrics:
        return {"round": last_round.number if last_round else None, "model_version": model.version,
                **{k: model.metrics.get(k) for k in keys}}
    if last_round is None or not last_round.metrics:
        return None
    return {"round": last_round.number, "model_version": last_round.model_version,
            **{k: last_round.metrics.get(k) for k in keys}}


def project_status(ctx: ReportContext, measure_latency: bool = True) -> dict:
    """What the project holds, and what it cost: LLM spend, the latest model's latency on this machine
    (measured once per model version, then read from the store) and GPT-4o per request instead."""
    from synthloop.report.impact import status_impact
    from synthloop.report.nightly_report import recent_runs

    store = ctx.store
    counts = store.count_examples()
    by_source: dict[str, dict[str, int]] = {}
    for source, label, n in store.label_counts():
        by_source.setdefault(source, {})[label] = n
    rounds = store.rounds()
    last = next((r for r in reversed(rounds) if r.metrics), None)
    model = store.latest_model()
    return {
        "project": str(ctx.root),
        "task": ctx.task.name,
        "examples": {f"{split}/{origin}": n for (split, origin), n in sorted(counts.items())},
        "labels": by_source,
        "queries": store.query_counts(),
        "query_reasons": store.query_reasons(),
        "llm": as_dicts(store.llm_usage()),
        "rounds": len(rounds),
        "model_version": model.version if model else None,
        "last_metrics": metrics_summary(last, model),
        "impact": status_impact(ctx, measure=measure_latency),
        "runs": recent_runs(store, 5),  # the nightly job's last runs, a failed one too
    }
