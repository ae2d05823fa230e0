"""How the report looks: matplotlib figures (Agg: no display needed) as PNG bytes, and the page as
blocks that render to one self-contained HTML file and to Markdown."""

from __future__ import annotations

import base64
import html
import io
import math
import time

import matplotlib

matplotlib.use("Agg")  # headless servers and cron have no display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

WIDTH, HEIGHT, DPI = 6.4, 3.6, 110


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    plt.close(fig)
    return buf.getvalue()


def _figure(title: str, xlabel: str, ylabel: str):
    fig, ax = plt.subplots(figsize=(WIDTH, HEIGHT))
    ax.set_title(title, fontsize=11)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # labels and rounds are counts
    return fig, ax


def learning_curve(points: list[dict], baselines: dict[str, list[dict]]) -> bytes:
    fig, ax = _figure("Test score vs real labels", "real labels", "score on the test split")
    xs = [p["labels"] for p in points]
    ax.plot(xs, [p["accuracy"] for p in points], "o-", color="C0", label="accuracy")
    ax.plot(xs, [p["macro_f1"] for p in points], "s-", color="C1", label="macro-F1")
    for k, (name, curve) in enumerate(baselines.items()):
        bx = [p["labels"] for p in curve]
        ax.plot(bx, [p.get("accuracy") for p in curve], "--", color=f"C{k + 2}", label=f"{name}: accuracy")
        if any(p.get("macro_f1") is not None for p in curve):
            ax.plot(bx, [p.get("macro_f1") for p in curve], ":", color=f"C{k + 2}", label=f"{name}: macro-F1")
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def per_class_f1(xs: list[int], series: dict[str, list[float]]) -> bytes:
    fig, ax = _figure("F1 per class", "real labels", "F1 on the test split")
    for name, values in series.items():
        ax.plot(xs, values, "o-", label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=8, loc="lower right")
    return _png(fig)


def confusion(labels: list[str], matrix: list[list[int]], title: str) -> bytes:
    size = max(3.2, 0.6 * len(labels) + 2.0)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(matrix, cmap="Blues")
    top = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, n in enumerate(row):
            ax.text(j, i, str(n), ha="center", va="center", color="white" if n > top / 2 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _png(fig)


def stacked_bars(categories: list[str], stacks: dict[str, list[float]], title: str, xlabel: str, ylabel: str) -> bytes:
    fig, ax = _figure(title, xlabel, ylabel)
    ax.grid(alpha=0.3, axis="y")
    ax.grid(False, axis="x")
    positions = list(range(len(categories)))
    bottom = [0.0] * len(categories)
    for name, values in stacks.items():
        if not any(values):
            continue  # keeps the legend to what is drawn
        ax.bar(positions, values, width=0.6, bottom=bottom, label=name)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(positions, categories, rotation=30 if len(categories) > 6 else 0)
    ax.set_xlim(-0.7, max(len(categories), 2) - 0.3)  # one bar does not fill the whole plot
    ax.legend(fontsize=8)
    return _png(fig)


def lines(xs: list, series: dict[str, list], title: str, xlabel: str, ylabel: str) -> bytes:
    fig, ax = _figure(title, xlabel, ylabel)
    for name, values in series.items():
        ax.plot(xs, values, "o-", label=name)
    ax.legend(fontsize=8)
    return _png(fig)


# rendering --------------------------------------------------------------------------------------
def _f(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _usd(value) -> str:
    if value is None:
        return "–"
    return "$0" if value == 0 else f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _short(text: str, n: int = 140) -> str:
    return text if len(text) <= n else text[:n - 1] + "…"


def _round_name(number) -> str:
    return "outside rounds" if number is None else str(number)


def _errors_per_round(per_round: list[dict]) -> list[dict]:
    """Misclassified test examples per true class, from each scored round's confusion matrix."""
    out = []
    for r in per_round:
        if not r["confusion"]:
            continue
        labels, matrix = r["confusion"]["labels"], r["confusion"]["matrix"]
        out.append({"round": r["round"], "labels": r["labels"],
                    "errors": {lab: sum(row) - row[i] for i, (lab, row) in enumerate(zip(labels, matrix))}})
    return out


def _glance(d: dict) -> list[list]:
    rows = []
    if d["curve"]:
        last = d["curve"][-1]
        rows.append(["test accuracy / macro-F1", f"{_f(last['accuracy'])} / {_f(last['macro_f1'])} with {last['labels']} real labels"])
    labels = sum(n for src, c in d["labels_by_source"].items() if not src.startswith("synthetic") for n in c.values())
    rows.append(["labels stored (all sources)", labels])
    rows.append(["spent on LLM calls", f"{_usd(d['llm']['total_cost'])} ({d['llm']['total_tokens']:,} tokens)"])
    q = d["label_quality"]
    if "method" in q:
        rows.append(["labels to re-check", f"{q['n_flagged']} flagged, {len(q['suspicious'])} listed below"])
    cf = d["counterfactual"]
    rows.append(["GPT-4o instead, per 1k predictions (estimate)", f"{_usd(cf['rows'][-1]['usd_per_1k'])}, "
                 f"{cf['rows'][-1]['seconds_per_1k_one_by_one']:,.0f} s one by one"])
    if d["latency"]:
        rows.append(["compact model, per 1k predictions (measured)", f"$0, {d['latency']['mean_ms']:,.1f} s one by one"])
    return rows


def blocks(d: dict, label_names: list[str]) -> list[tuple]:
    """The report as (kind, ...) blocks that both the HTML and the Markdown writers render."""
    b: list[tuple] = []
    curve, s = d["curve"], d["summary"]
    b.append(("p", f"Project {d['project']}, model version {d['model_version']}, {d['rounds']} round{'s' if d['rounds'] != 1 else ''}; "
                   f"generated {d['generated_at']}."))
    b.append(("table", ["at a glance", ""], _glance(d)))

    b.append(("h2", "What labeling bought"))
    if not curve:
        b.append(("p", "No round was scored: import a test split (`synthloop import FILE --split test --label-col label`) "
                       "and run `synthloop round`."))
    else:
        first, last = s["first"], s["last"]
        seed = " (the seed model, trained on the task's examples)" if first["labels"] == 0 else ""
        b.append(("p", f"Accuracy went from {_f(first['accuracy'])} with {first['labels']} real labels{seed} to "
                       f"{_f(last['accuracy'])} with {last['labels']} (macro-F1 {_f(first['macro_f1'])} to {_f(last['macro_f1'])})."))
        for name, v in s["vs"].items():
            text = (f"{name.capitalize()} at {last['labels']} labels: accuracy {_f(v['accuracy_at_same_labels'])} "
                    f"(this run: {_f(last['accuracy'])})")
            if v["labels_to_reach_same_accuracy"] is not None:
                text += f"; {name} needed {v['labels_to_reach_same_accuracy']} labels to reach {_f(last['accuracy'])}"
            else:
                text += f"; {name} never reached {_f(last['accuracy'])} in its curve"
            b.append(("p", text + "."))
        b.append(("img", "learning curve", learning_curve(curve, d["baselines"])))
        b.append(("table", ["round", "real labels", "accuracy", "macro-F1"],
                  [[p["round"], p["labels"], _f(p["accuracy"]), _f(p["macro_f1"])] for p in curve]))
        for name, base in d["baselines"].items():
            b.append(("table", [f"{name}: labels", "accuracy", "macro-F1"],
                      [[p["labels"], _f(p["accuracy"]), _f(p.get("macro_f1"))] for p in base]))
        b.append(("h2", "Per class"))
        b.append(("img", "F1 per class", per_class_f1(d["per_class_f1"]["labels"], d["per_class_f1"]["f1"])))
        latest = d["latest"]
        b.append(("table", ["class", "precision", "recall", "F1", "support"],
                  [[lab, _f(v["precision"]), _f(v["recall"]), _f(v["f1"]), v["support"]] for lab, v in latest["per_class"].items()]))
        b.append(("img", "confusion matrix", confusion(latest["confusion"]["labels"], latest["confusion"]["matrix"],
                                                           f"Confusion matrix, round {latest['round']} (test split)")))
        errors = _errors_per_round(d["per_round"])
        if len(errors) > 1:  # one round is the matrix above
            b.append(("img", "test errors by true class over rounds", stacked_bars(
                [str(r["round"]) for r in errors], {lab: [float(r["errors"].get(lab, 0)) for r in errors] for lab in label_names},
                "Test errors by true class, per round (off-diagonal of each confusion matrix)", "round", "misclassified")))
            b.append(("table", ["round", "real labels", *(f"{lab} errors" for lab in label_names), "all errors"],
                      [[r["round"], r["labels"], *(r["errors"].get(lab, 0) for lab in label_names), sum(r["errors"].values())]
                       for r in errors]))

    b.append(("h2", "Labels"))
    by_source = d["labels_by_source"]
    if by_source:
        b.append(("img", "labels by source and class", stacked_bars(
            label_names, {src: [float(c.get(lab, 0)) for lab in label_names] for src, c in by_source.items()},
            "Labels by class and source", "class", "labels")))
        b.append(("table", ["source", *label_names, "total"],
                  [[src, *(c.get(lab, 0) for lab in label_names), sum(c.values())] for src, c in by_source.items()]))
        per_round = d["per_round"]
        if len(per_round) > 1:
            sources = sorted({src for r in per_round for src in r["labels_total"]})
            totals = {src: [float(sum(r["labels_total"].get(src, {}).values())) for r in per_round] for src in sources}
            b.append(("img", "labels by source over rounds", stacked_bars(
                [str(r["round"]) for r in per_round], totals, "Labels stored by the end of each round, by source",
                "round", "labels")))
            b.append(("table", ["round", *sources], [[r["round"], *(int(totals[src][k]) for src in sources)]
                                                    for k, r in enumerate(per_round)]))
    else:
        b.append(("p", "No labels stored yet."))
    if d["synthetic_added"]:
        rows = d["synthetic_added"]
        b.append(("img", "synthetic examples added", stacked_bars(
            [_round_name(r["round"]) for r in rows], {lab: [float(r.get(lab, 0)) for r in rows] for lab in label_names},
            "Synthetic examples added (per round: minority top-up)", "round", "examples")))
        b.append(("table", ["round", *label_names], [[_round_name(r["round"]), *(r.get(lab, 0) for lab in label_names)]
                                                     for r in rows]))

    if d["monitor"]:
        m = d["monitor"]
        b.append(("h2", "Pool uncertainty and stopping"))
        series = {k: [r[k] for r in m] for k in ("mean_margin", "mean_entropy", "kappa") if any(r[k] is not None for r in m)}
        b.append(("img", "pool uncertainty", lines([r["round"] for r in m], series,
                                                         "Unlabeled pool: uncertainty, and agreement between rounds", "round", "value")))
        rule = next((r for r in m if r.get("kappa_threshold") is not None), None)
        when = (f" (stop once kappa ≥ {rule['kappa_threshold']} for {rule['window']} rounds in a row)" if rule
                else " (stop once it stays high)")
        b.append(("p", "Margin rises and entropy falls as the model grows sure of the pool; kappa is the agreement of "
                       f"consecutive models on a fixed stop set{when}."))
        b.append(("table", ["round", "labels", "mean margin", "mean entropy", "pool sample", "kappa", "stable rounds", "stop?"],
                  [[r["round"], r["labels"], _f(r["mean_margin"]), _f(r["mean_entropy"]), _f(r["pool_n"]), _f(r["kappa"]),
                    _f(r.get("stable_rounds")), {True: "yes", False: "no"}.get(r["should_stop"], "–")] for r in m]))

    q = d["label_quality"]
    b.append(("h2", "Label quality"))
    a = q["agreement"]
    if a["n"]:
        b.append(("p", f"LLM and human labels agree on {a['agreement']:.1%} of {a['n']} examples labeled by both "
                       f"(Cohen's kappa {_f(a['kappa'])})."))
        if a["disagreements"]:
            b.append(("table", ["id", "text", "human", "LLM"],
                      [[x["id"][:10], _short(x["text"]), x["human"], f"{x['llm']} ({x['llm_source']})"] for x in a["disagreements"]]))
    else:
        b.append(("p", f"LLM vs human: {a['note']}."))
    if "method" in q:
        b.append(("p", f"{q['n_checked']} real labels checked against {q['folds']}-fold out-of-fold predictions of the "
                       f"project's model, which match the given label for {q['out_of_fold_agreement']:.1%} of them. "
                       f"Ranked by {q['method']}; {q['n_flagged']} flagged as likely wrong. "
                       "Re-check these first (lowest score = most suspicious):"))
        if q["suspicious"]:
            b.append(("table", ["id", "text", "given", "source", "predicted", "score", "P(given)", "flagged"],
                      [[x["id"][:10], _short(x["text"]), x["given"], x["source"], x["predicted"], _f(x["score"]),
                        _f(x["p_given"]), "yes" if x["flagged"] else ""] for x in q["suspicious"]]))
    else:
        b.append(("p", f"Suspicious labels: not checked; {q['note']}."))

    llm, cf = d["llm"], d["counterfactual"]
    b.append(("h2", "Cost"))
    if llm["usage"]:
        b.append(("table", ["purpose", "model", "calls", "cached", "failed", "prompt tokens", "completion tokens", "$", "seconds"],
                  [[u["purpose"], u["model"], u["calls"], u["cached"], u["failed"], u["prompt_tokens"], u["completion_tokens"],
                    _usd(u["cost"]), _f(float(u["latency"] or 0), 1)] for u in llm["usage"]]))
        rows = llm["per_round"]
        outside = {p: v["cost"] - sum(r.get(p, 0.0) for r in rows) for p, v in llm["by_purpose"].items()}
        categories = [str(r["round"]) for r in rows]
        stacks = {p: [r.get(p, 0.0) for r in rows] for p in llm["by_purpose"]}
        if any(v > 1e-12 for v in outside.values()):  # e.g. `synthloop generate` before the loop
            categories.insert(0, "outside rounds")
            stacks = {p: [outside[p], *v] for p, v in stacks.items()}
        b.append(("img", "LLM cost over rounds", stacked_bars(categories, stacks, "LLM spend per round, by purpose", "round", "USD")))
        b.append(("p", f"Total: {_usd(llm['total_cost'])} for {llm['total_tokens']:,} tokens."))
    else:
        b.append(("p", "No LLM calls recorded: labels came from people, imports or the oracle; $0 spent on LLMs."))

    b.append(("h2", "Savings: compact model vs GPT-4o per 1,000 predictions"))
    lat = d["latency"]
    if lat:
        b.append(("p", f"Compact model latency, measured here ({lat['machine']}): p50 {lat['p50_ms']:.2f} ms, "
                       f"p95 {lat['p95_ms']:.2f} ms per single prediction over {lat['single_calls']} calls; "
                       f"{lat['throughput_per_s']:,.0f} texts/s in one batch of {lat['batch_texts']:,}."))
    else:
        b.append(("p", "Latency not measured (--no-latency)."))
    b.append(("table", ["", "$ per 1k", "seconds per 1k, one by one", "seconds per 1k, batched"],
              [[r["what"], _usd(r["usd_per_1k"]), _f(r["seconds_per_1k_one_by_one"], 2), _f(r["seconds_per_1k_batched"], 2)]
               for r in cf["rows"]]))
    b.append(("p", f"GPT-4o estimate: {cf['prompt_tokens']} prompt + {cf['completion_tokens']} completion tokens per request "
                   f"(zero-shot prompt from the task plus an average text of {cf['avg_text_chars']:.0f} characters) = "
                   f"{_usd(cf['usd_per_request'])} per prediction. Assumptions: {cf['assumptions']}."))
    if lat:
        gpt, local = cf["rows"][1], cf["rows"][0]
        b.append(("p", f"Per 1,000 predictions the compact model saves {_usd(gpt['usd_per_1k'])} and answers "
                       f"{gpt['seconds_per_1k_one_by_one'] / local['seconds_per_1k_one_by_one']:,.0f}x faster one by one."))
    pool = cf.get("whole_pool")
    if pool and pool["texts"]:
        b.append(("p", f"Labeling the whole pool ({pool['texts']:,} texts) with GPT-4o, one request each, would cost about "
                       f"{_usd(pool['usd'])} and take about {pool['seconds_one_by_one'] / 3600:,.1f} hours one by one (estimate)."))
    if llm["total_cost"] and cf["break_even_predictions"]:
        b.append(("p", f"The {_usd(llm['total_cost'])} spent on LLM calls equals {cf['break_even_predictions']:,} GPT-4o "
                       "predictions: past that, every prediction the compact model serves is money saved."))

    co2 = d["co2"]
    b.append(("h2", "CO2 of local compute (estimate)"))
    if "measured_kg_co2" in co2:
        b.append(("table", ["what", "seconds", "kWh", "g CO2eq"],
                  [["report: k-fold refits and latency benchmark (measured)", _f(co2["measured_seconds"], 1),
                    f"{co2['measured_kwh']:.2e}", f"{1000 * co2['measured_kg_co2']:.4f}"],
                   ["loop: model training, all rounds (extrapolated)", _f(co2["training_seconds"], 1),
                    f"{co2['training_kwh']:.2e}", f"{1000 * co2['training_kg_co2']:.4f}"]]))
        b.append(("p", f"Estimate, not a meter reading: {co2['note']}; average {co2['average_watts']:.1f} W, grid "
                       f"{1000 * co2['kg_co2_per_kwh']:.0f} g CO2eq/kWh ({co2['country']}), CPU {co2['cpu_model']}."))
    else:
        b.append(("p", f"Not measured: {co2['note']}."))

    runs = d.get("runs") or []
    if runs:
        b.append(("h2", "Nightly runs"))
        b.append(("table", ["run", "started (UTC)", "status", "round", "queried", "labels collected", "seconds", "note"],
                  [[r["run"], time.strftime("%Y-%m-%d %H:%M", time.gmtime(r["started_at"])), r["status"],
                    "-" if r["round"] is None else r["round"], "-" if r["queried"] is None else r["queried"],
                    "-" if r["labels_collected"] is None else r["labels_collected"],
                    "-" if r["seconds"] is None else _f(r["seconds"], 1),
                    _short(r["error"]) if r["error"] else ("outage: a server did not answer" if r["outage"] else "")]
                   for r in runs]))
    return b


def to_html(blocks: list[tuple], title: str) -> str:
    parts = []
    for block in blocks:
        kind = block[0]
        if kind == "h2":
            parts.append(f"<h2>{html.escape(block[1])}</h2>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(block[1])}</p>")
        elif kind == "table":
            head = "".join(f"<th>{html.escape(h)}</th>" for h in block[1])
            body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in block[2])
            parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
        elif kind == "img":
            src = "data:image/png;base64," + base64.b64encode(block[2]).decode("ascii")
            parts.append(f'<figure><img src="{src}" alt="{html.escape(block[1])}"></figure>')
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}"
             "table{border-collapse:collapse;margin:.5rem 0 1rem}th,td{border:1px solid #ccc;padding:.25rem .6rem;"
             "text-align:left;vertical-align:top}th{background:#f3f3f3}table{font-size:.92em}td{max-width:26rem;"
             "overflow-wrap:break-word}img{max-width:100%}"
             "figure{margin:.5rem 0}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>synthloop report: {html.escape(title)}</title>'
            f"<style>{style}</style></head><body><h1>synthloop report: {html.escape(title)}</h1>"
            + "\n".join(parts) + "</body></html>\n")


# Markdown renders raw HTML and links: user text (label names, texts, the task name) must reach report.md as
# text. HTML's specials become entities, and Markdown's link and emphasis marks are backslash-escaped.
_MD_SPECIALS = str.maketrans({c: "\\" + c for c in "\\`*_[]()#!|~"})


def md_text(value, code_spans: bool = False) -> str:
    """`value` as literal Markdown text. code_spans keeps our own `command` spans (paragraphs we wrote)."""
    text = html.escape(str(value), quote=False).replace("\n", " ")
    if code_spans:
        return text.replace("[", "\\[").replace("]", "\\]")
    return text.translate(_MD_SPECIALS)


def to_markdown(blocks: list[tuple], title: str) -> str:
    parts = [f"# synthloop report: {md_text(title)}", "", "Plots are in report.html."]
    for block in blocks:
        kind = block[0]
        if kind == "h2":
            parts += ["", f"## {md_text(block[1])}"]
        elif kind == "p":
            parts += ["", md_text(block[1], code_spans=True)]
        elif kind == "table":
            parts += ["", "| " + " | ".join(map(md_text, block[1])) + " |", "|" + "---|" * len(block[1])]
            parts += ["| " + " | ".join(map(md_text, row)) + " |" for row in block[2]]
    return "\n".join(parts) + "\n"
