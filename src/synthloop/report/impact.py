"""Cost and impact: what the LLM cost so far, what the compact model costs to run on this machine, and
what GPT-4o per request would cost instead. Shared by `synthloop status` and the report."""

from __future__ import annotations

import math
import os
import platform
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from synthloop.config import Config
from synthloop.errors import SynthloopError
from synthloop.llm.pricing import cost_usd
from synthloop.report.context import ReportContext
from synthloop.store import LLMUsage, Store, as_dicts
from synthloop.task import TaskSpec

# Nobody has measured GPT-4o for this project: a typical single short-completion request takes
# 0.5-1 s end to end, so the counterfactual uses the middle of that range and says so.
GPT4O_SECONDS_PER_REQUEST = 0.75
GPT4O_OUTPUT_TOKENS = 5  # a label name and the end of the message
CHARS_PER_TOKEN = 4
MESSAGE_OVERHEAD_TOKENS = 7  # chat-format tokens around the system and user messages
# `status` times fewer single calls than the report: it runs often, and the mean settles well before 50.
STATUS_SINGLE_CALLS = 50
LATENCY_META_KEY = "inference_latency:v{version}"


def llm_totals(usage: list[LLMUsage]) -> dict:
    """Calls, tokens and $ per purpose (summed over models), and the totals, from store.llm_usage()."""
    by_purpose: dict[str, dict] = defaultdict(lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": 0.0})
    for row in usage:
        for key in ("calls", "prompt_tokens", "completion_tokens", "cost"):
            by_purpose[row.purpose][key] += getattr(row, key) or 0
    return {"by_purpose": dict(by_purpose), "total_cost": sum(v["cost"] for v in by_purpose.values()),
            "total_tokens": sum(v["prompt_tokens"] + v["completion_tokens"] for v in by_purpose.values())}


def sample_texts(store: Store, task: TaskSpec, n: int = 1000) -> list[str]:
    texts = store.test_set()[0] or store.pool_texts_sample(n, 0) or [t for t, _ in task.examples()]
    return (texts * math.ceil(n / len(texts)))[:n] if texts else []


def _machine() -> str:
    return f"{platform.node()}: {platform.machine()}, {os.cpu_count()} CPUs"


def measure_model_latency(store: Store, task: TaskSpec, model, singles: int = 200, batch: int = 1000) -> dict:
    texts = sample_texts(store, task, batch)
    model.predict_proba(texts[:1])  # first call pays for lazy imports and caches
    times = []
    for i in range(singles):
        start = time.perf_counter()
        model.predict_proba([texts[i % len(texts)]])
        times.append(time.perf_counter() - start)
    start = time.perf_counter()
    model.predict_proba(texts)
    seconds = time.perf_counter() - start
    return {"p50_ms": 1000 * float(np.percentile(times, 50)), "p95_ms": 1000 * float(np.percentile(times, 95)),
            "mean_ms": 1000 * float(np.mean(times)), "single_calls": singles, "batch_texts": len(texts),
            "batch_seconds": seconds, "throughput_per_s": len(texts) / seconds,
            "machine": (f"{platform.machine()}, {os.cpu_count()} CPUs, one BLAS thread, "
                        f"load average {os.getloadavg()[0]:.1f} when measured")}


def model_latency(ctx: ReportContext, refresh: bool = False) -> dict:
    """The latest model's latency on this machine, measured once per model version and machine and kept
    in the store's meta table, so `synthloop status` stays fast. Raises SynthloopError when there is no model."""
    from threadpoolctl import threadpool_limits

    row = ctx.store.latest_model()
    if row is None:
        raise SynthloopError("no model yet; run `synthloop train` or `synthloop round` first")
    key = LATENCY_META_KEY.format(version=row.version)
    cached = ctx.store.get_meta(key)
    # A number measured on another machine (a copied project) says nothing about this one.
    if cached and not refresh and cached.get("host") == _machine():
        return {**cached, "cached": True}
    version, model = ctx.load_model(row.version)
    # One BLAS thread, as in the report: single predictions gain nothing from more, and on a busy machine
    # OpenBLAS's spinning threads make them many times slower.
    with threadpool_limits(1):
        latency = measure_model_latency(ctx.store, ctx.task, model, singles=STATUS_SINGLE_CALLS)
    latency.update({"model_version": version, "host": _machine(), "measured_at": time.time(),
                    "seconds_per_1k_batched": 1000 / latency["throughput_per_s"],
                    "seconds_per_1k_one_by_one": latency["mean_ms"]})
    if not ctx.store.readonly:  # a read-only project is measured each time, not remembered
        ctx.store.set_meta(key, latency)
    return {**latency, "cached": False}


def pool_size(store: Store) -> int:
    """Real pool examples (labeled or not): what labeling everything with an LLM would have meant."""
    return sum(n for (split, origin), n in store.count_examples().items() if split == "pool" and origin != "synthetic")


def counterfactual(store: Store, config: Config, latency: dict | None, llm_spent: float) -> dict:
    """Serving each prediction with one GPT-4o request instead, and labeling the whole pool that way:
    tokens from a zero-shot prompt's length."""
    texts = sample_texts(store, config.task, 1000)
    avg_chars = sum(map(len, texts)) / len(texts) if texts else 0.0  # a new project: no text to size the prompt by yet
    prompt = ("You are a text classifier. Answer with exactly one label name.\n\n" + config.task.render()
              + "\n\nText: ")
    prompt_tokens = math.ceil((len(prompt) + avg_chars) / CHARS_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS
    per_request = cost_usd("gpt-4o", prompt_tokens, GPT4O_OUTPUT_TOKENS, prices=config.llm.prices)
    rows = [{"what": "GPT-4o, one request per prediction (estimate)", "usd_per_1k": 1000 * per_request,
             "seconds_per_1k_one_by_one": 1000 * GPT4O_SECONDS_PER_REQUEST, "seconds_per_1k_batched": None}]
    if latency:
        rows.insert(0, {"what": "compact model on this machine (measured)", "usd_per_1k": 0.0,
                        "seconds_per_1k_one_by_one": latency["mean_ms"], "seconds_per_1k_batched": 1000 / latency["throughput_per_s"]})
    n_pool = pool_size(store)
    return {"model": "gpt-4o", "prompt_tokens": prompt_tokens, "completion_tokens": GPT4O_OUTPUT_TOKENS,
            "avg_text_chars": avg_chars, "usd_per_request": per_request,
            "assumed_seconds_per_request": GPT4O_SECONDS_PER_REQUEST, "rows": rows,
            "whole_pool": {"texts": n_pool, "usd": n_pool * per_request,
                           "seconds_one_by_one": n_pool * GPT4O_SECONDS_PER_REQUEST},
            "break_even_predictions": math.ceil(llm_spent / per_request) if per_request else None,
            "assumptions": (f"~{CHARS_PER_TOKEN} characters per token; {GPT4O_OUTPUT_TOKENS} output tokens; "
                            f"{GPT4O_SECONDS_PER_REQUEST} s per request is an assumed typical latency (0.5-1 s), "
                            "not measured; the compact model costs no per-call fee (its electricity is under CO2)")}


def status_impact(ctx: ReportContext, measure: bool = True) -> dict:
    """What `synthloop status` shows under cost and impact."""
    spent = llm_totals(ctx.store.llm_usage())
    latency, note = None, None
    if measure:
        try:
            latency = model_latency(ctx)
        except SynthloopError as err:  # no model yet, or its file is gone: the rest still tells something
            note = str(err)
    else:
        note = "not measured"
    return {"llm_spent_usd": spent["total_cost"], "llm_tokens": spent["total_tokens"], "llm_by_purpose": spent["by_purpose"],
            "llm_by_round": as_dicts(ctx.store.llm_usage_by_round()),
            "compact_model": latency, "compact_model_note": note,
            "counterfactual": counterfactual(ctx.store, ctx.config, latency, spent["total_cost"]),
            "co2": last_co2(ctx.state_dir)}


def last_co2(state_dir: Path) -> dict:
    """The CO2 estimate of the latest report: codecarbon samples power while it runs, which a status
    command that must answer in a second cannot wait for."""
    import json

    path = state_dir / "reports" / "report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"estimate": True, "note": "no report yet: `synthloop report` measures it with codecarbon"}
    return {**(report.get("co2") or {}), "report": str(path), "generated_at": report.get("generated_at")}
