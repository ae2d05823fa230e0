"""Synthetic training data from an LLM: class-conditioned, diverse, deduplicated and filtered.

Also the minority top-up: classes that real labels leave short get fresh synthetic examples,
conditioned on that class's real labeled examples.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, cast

import numpy as np
from pydantic import BaseModel, Field, StringConstraints, create_model
from sklearn.feature_extraction.text import HashingVectorizer

from synthloop.data import example_id
from synthloop.errors import SynthloopError
from synthloop.labelers.context import LabelContext
from synthloop.llm.quoting import DATA_RULE, quote
from synthloop.store import NewLabel
from synthloop.task import TaskSpec
from synthloop.textcap import DEFAULT_MAX_TEXT_CHARS, cap_texts

PROMPT_VERSION = "synth-v1"

STYLES = ["casual", "formal", "terse", "detailed", "emotional", "matter-of-fact", "with a typo or two", "headline-like"]
LENGTHS = ["very short (under 10 words)", "short (one sentence)", "medium (two or three sentences)"]
PERSONAS = ["a student", "a parent", "a retiree", "a small-business owner", "a journalist", "a teenager",
            "an office worker", "a customer", "a nurse", "a shop assistant"]


class Generated(BaseModel):
    texts: list[str] = Field(min_length=1)


def generated_model(k: int, min_chars: int, max_chars: int) -> type[BaseModel]:
    """The answer schema with its bounds, so that servers that compile the schema into a grammar
    (llama.cpp) can neither ramble past k texts of max_chars characters nor answer with scraps."""
    text = Annotated[str, StringConstraints(min_length=min_chars, max_length=max_chars)]
    return create_model("Generated", texts=(list[text], Field(min_length=1, max_length=k)))


@dataclass
class GenerationReport:
    requested: dict[str, int]
    added: dict[str, int] = field(default_factory=dict)
    dropped: Counter = field(default_factory=Counter)  # reason -> count
    failed_calls: int = 0
    cost: float = 0.0
    dropped_subtopics: int = 0  # sub-topics that fit another class better ([synth] subtopic_check)
    # label -> every candidate that passed the text filters, in order, with the label checks' verdicts
    # ({"text", "llm", "embedding"}; a check that did not run is absent): what each filter alone would keep.
    candidates: dict[str, list[dict]] = field(default_factory=dict)


class Subtopics(BaseModel):
    subtopics: list[Annotated[str, StringConstraints(min_length=3, max_length=80)]] = Field(min_length=1, max_length=20)


def subtopic_messages(task: TaskSpec, label: str, k: int) -> list[dict]:
    spec = next(lab for lab in task.labels if lab.name == label)
    return [
        {"role": "system", "content": "You plan diverse training data for a text classifier."},
        {"role": "user", "content": (
            f"Task: {task.description}\nClass: {label}" + (f" — {spec.description}" if spec.description else "")
            + f"\nList {k} distinct sub-topics or situations that texts of this class are about, a few words each."
            + '\nAnswer with JSON: {"subtopics": ["...", "..."]}')},
    ]


def draw_subtopics(ctx: LabelContext, labels: list[str], round_: int | None) -> dict[str, list[str]]:
    """Sub-topics per class, asked of the LLM once: the same prompt each time, so later calls (top-up rounds,
    a re-run) are answered from the cache for free. A class whose answer fails goes without."""
    k = ctx.config.synth.subtopics
    if k <= 0:
        return {}
    requests = [subtopic_messages(ctx.task, label, k) for label in labels]
    results = ctx.llm_client().complete_json_many(requests, Subtopics, temperature=0.7, seed=0,
                                                  max_tokens=k * 25 + 20,
                                                  on_result=ctx.usage_recorder("generate", round_))
    topics = {}
    for label, result in zip(labels, results):
        if result.value is not None:
            kept = clean_subtopics(cast(Subtopics, result.value).subtopics)[:k]
            if kept:
                topics[label] = kept
    return topics


def clean_subtopics(raw: list[str]) -> list[str]:
    """Without list numbering and bullets, duplicates, or entries with no word in them ("...", "2.")."""
    out: list[str] = []
    for item in raw:
        text = re.sub(r"^\s*(?:\d+[.)]|[-*•])\s*", "", " ".join(item.split())).strip(" .,;:")
        if sum(ch.isalpha() for ch in text) >= 3 and text.lower() not in {t.lower() for t in out}:
            out.append(text)
    return out


def generation_messages(task: TaskSpec, label: str, k: int, rng: random.Random,
                        examples: list[str] | None = None, subtopics: list[str] | None = None,
                        max_chars: int | None = DEFAULT_MAX_TEXT_CHARS, style: list[str] | None = None) -> list[dict]:
    """One request for k texts of one class; the sub-topic is sampled for diversity. `style` are real pool texts
    (unlabeled, of any class) whose form the texts should take; without them a style, length and persona are
    sampled instead (which made news read like diary entries: benchmarks/synthetic.md)."""
    spec = next(lab for lab in task.labels if lab.name == label)
    others = ", ".join(lab.name for lab in task.labels if lab.name != label)
    shots = examples if examples is not None else spec.examples
    shots = rng.sample(list(shots), min(3, len(shots))) if shots else []
    lines = [
        f"Task: {task.description}",
        f"Class to write: {label}" + (f" — {spec.description}" if spec.description else ""),
        f"Other classes (do NOT write texts that fit them): {others}",
        f"Write {k} new, realistic, varied texts that clearly belong to '{label}'.",
        f"Style: {rng.choice(STYLES)}. Length: {rng.choice(LENGTHS)}. Written by {rng.choice(PERSONAS)}.",
        "Vary topics, wording and structure; never copy the examples.",
    ]
    if style:
        lines[4] = ("Real texts from the data, of any class (unlabeled): write yours in their form — source, length, "
                    "tone, vocabulary, formatting — but about '" + label + "':\n"
                    + "\n".join(quote(s, max_chars) for s in style) + "\n" + DATA_RULE)
    if subtopics:
        lines.insert(4, f"Sub-topic: {rng.choice(subtopics)}.")
    if shots:
        # Top-up's examples are pool texts: quoted and capped like every pool text in a prompt (llm.quoting).
        lines.append("Examples of this class:\n" + "\n".join(quote(s, max_chars) for s in shots) + "\n" + DATA_RULE)
    lines.append('Answer with JSON: {"texts": ["...", "..."]}')
    return [
        {"role": "system", "content": "You write realistic example texts for training a text classifier."},
        {"role": "user", "content": "\n".join(lines)},
    ]


class NearDuplicateIndex:
    """Character n-gram vectors; a text is a near duplicate when its cosine to a kept one is above the threshold."""

    def __init__(self, threshold: float, existing: Sequence[str] = ()):
        self.threshold = threshold
        self.vectorizer = HashingVectorizer(analyzer="char_wb", ngram_range=(3, 5), n_features=2**18,
                                            alternate_sign=False, norm="l2")
        self.matrix = self.vectorizer.transform(list(existing)) if existing else None

    def is_near_duplicate(self, text: str) -> bool:
        vec = self.vectorizer.transform([text])
        if self.matrix is not None and self.matrix.shape[0] and (self.matrix @ vec.T).max() >= self.threshold:
            return True
        from scipy.sparse import vstack

        self.matrix = vec if self.matrix is None else vstack([self.matrix, vec]).tocsr()
        return False


_QUOTE_TAGS = re.compile(r"<\s*/?\s*text\s*>|</?<+", re.IGNORECASE)


def filter_texts(candidates: list[str], label: str, seen_ids: set[str], index: NearDuplicateIndex,
                 min_chars: int, max_chars: int, report: GenerationReport) -> list[str]:
    kept = []
    for raw in candidates:
        # A model shown quoted pool texts may quote its own answers the same way: the tags are not the text.
        text = " ".join(_QUOTE_TAGS.sub(" ", str(raw)).split())
        if not text:
            report.dropped["empty"] += 1
        elif len(text) < min_chars or len(text) > max_chars:
            report.dropped["length"] += 1
        elif example_id(text) in seen_ids:
            report.dropped["exact duplicate"] += 1
        elif index.is_near_duplicate(text):
            report.dropped["near duplicate"] += 1
        else:
            seen_ids.add(example_id(text))
            kept.append(text)
    return kept


def topup_needs(real_counts: dict[str, int], train_counts: dict[str, int], labels: list[str],
                threshold: float, target: float, cap: int) -> dict[str, int]:
    """How many synthetic examples each minority class needs.

    A class is a minority when its share of the real labels is below `threshold`; it gets enough new
    examples for its share of the training set to reach `target`: (target*T - c) / (1 - target).
    """
    real_total = sum(real_counts.values())
    if real_total == 0:
        return {}
    total = sum(train_counts.values())
    needs = {}
    for label in labels:
        if real_counts.get(label, 0) / real_total < threshold:
            have = train_counts.get(label, 0)
            missing = int(np.ceil((target * total - have) / (1 - target)))
            if missing > 0:
                needs[label] = min(missing, cap)
    return needs


def synthetic_labels(texts_by_label: dict[str, list[str]], model: str) -> tuple[list[dict], list[NewLabel]]:
    rows, labels = [], []
    for label, texts in texts_by_label.items():
        for text in texts:
            eid = example_id(text)
            rows.append({"id": eid, "text": text, "origin": "synthetic", "split": "pool",
                         "meta": {"prompt_version": PROMPT_VERSION, "model": model, "label": label}})
            labels.append(NewLabel(eid, label, f"synthetic:{model}", confidence=None))
    return rows, labels


def generation_seed(ctx: LabelContext, seed: int | None, round_: int | None) -> str:
    """Seeds the prompts and sampling seeds of one generation run. The round and the synthetic examples
    already stored make each top-up round and each repeated `generate` draw new prompts (the same ones would
    be answered from the cache and dropped as duplicates), while a run that crashed before storing anything
    draws the same ones again and is answered from the cache for free."""
    base = ctx.config.loop.seed if seed is None else seed
    n_synthetic = sum(n for (_, origin), n in ctx.store.count_examples().items() if origin == "synthetic")
    return f"{base}:{round_}:{n_synthetic}"


def style_pool(pool_sample: list[str], min_chars: int, max_chars: int) -> list[str]:
    """Pool texts to show as style examples: those that fit the answer's length bounds (an example longer than
    the schema allows would teach the model a length it cannot write), else every one cut to max_chars."""
    fits = [" ".join(t.split()) for t in pool_sample if min_chars <= len(" ".join(t.split())) <= max_chars]
    return fits or [" ".join(t.split())[:max_chars] for t in pool_sample if t.strip()]


def generate(ctx: LabelContext, per_class: int | dict[str, int], examples: dict[str, list[str]] | None = None,
             round_: int | None = None, consistency_filter: bool | None = None, seed: int | None = None,
             topup: bool = False) -> GenerationReport:
    """Generate, filter and store synthetic examples; `examples` conditions each class on real texts. LLM
    costs count in `round_`; a top-up's labels carry it too, so a resumed round knows what it added.

    The label-consistency filters ([synth] consistency_filter: the LLM re-labels; embedding_filter: the nearest
    class prototype) and `balance` run in that order; the LLM's rejections are made up by more requests."""
    cfg = ctx.config.synth
    labels = ctx.task.label_names
    wanted = per_class if isinstance(per_class, dict) else {lab: per_class for lab in labels}
    bad = {lab: n for lab, n in wanted.items() if not isinstance(n, int) or n < 0}
    if bad:
        raise SynthloopError(f"examples per class must be 0 or more, not {bad}; give --per-class N with N >= 0")
    use_llm = consistency_filter if consistency_filter is not None else cfg.consistency_filter
    report = GenerationReport(requested=dict(wanted))
    client = ctx.llm_client()
    rng = random.Random(generation_seed(ctx, seed, round_))
    # Exact duplicates are checked against the whole store; near duplicates against a sample of the pool,
    # which keeps generation quick on pools of millions.
    pool_sample = ctx.store.pool_texts_sample(cfg.dedup_pool_sample, ctx.config.loop.seed)
    index = NearDuplicateIndex(cfg.near_duplicate, cap_texts(pool_sample, ctx.config.limits.max_text_chars))
    styles = style_pool(pool_sample, cfg.min_chars, cfg.max_chars) if cfg.style_examples else []
    topics = draw_subtopics(ctx, list(wanted), round_)
    if topics and cfg.subtopic_check:
        from synthloop.synth_checks import fitting_subtopics

        topics, report.dropped_subtopics = fitting_subtopics(ctx, topics)
    seen: set[str] = set()
    kept_by_label: dict[str, list[str]] = {}
    for label, n in wanted.items():
        kept: list[str] = []
        calls_left = 3 * -(-n // cfg.per_call)  # give up after three times the calls a perfect model needs
        while len(kept) < n and calls_left > 0:
            batch = min(calls_left, -(-(n - len(kept)) // cfg.per_call))
            calls_left -= batch
            requests = [generation_messages(ctx.task, label, cfg.per_call, rng, (examples or {}).get(label),
                                            topics.get(label), ctx.config.limits.max_text_chars,
                                            rng.sample(styles, min(cfg.style_examples, len(styles))) if styles else None)
                        for _ in range(batch)]
            # A distinct seed per request keeps the cache from answering a repeated prompt with the same texts,
            # while a re-run after a crash draws the same seeds and is answered from the cache for free.
            seeds = [{"seed": rng.randrange(2**31)} for _ in requests]
            results = client.complete_json_many(requests, generated_model(cfg.per_call, cfg.min_chars, cfg.max_chars), per_request=seeds,
                                                temperature=cfg.temperature, max_tokens=cfg.per_call * (cfg.max_chars // 4 + 20),
                                                on_result=ctx.usage_recorder("generate", round_))
            fresh: list[str] = []
            for result in results:
                report.cost += result.usage.cost
                if result.value is None:
                    report.failed_calls += 1
                    continue
                answer: list[str] = result.value.texts  # type: ignore[attr-defined]  # generated_model's field
                candidates = filter_texts(answer, label, seen, index, cfg.min_chars, cfg.max_chars, report)
                stored = ctx.store.existing_ids([example_id(t) for t in candidates])
                for text in candidates:
                    if example_id(text) in stored:
                        report.dropped["exact duplicate"] += 1
                    else:
                        fresh.append(text)
            fresh = fresh[:n - len(kept)]  # texts beyond the count are neither re-labeled (a call each) nor kept
            verdicts = llm_check(ctx, label, fresh, round_) if use_llm else [True] * len(fresh)
            for text, ok in zip(fresh, verdicts):
                report.candidates.setdefault(label, []).append({"text": text, **({"llm": ok} if use_llm else {})})
                if ok:
                    kept.append(text)
                else:
                    report.dropped["label disagreement"] += 1
        kept_by_label[label] = kept
    kept_by_label = consistent(ctx, kept_by_label, wanted, report)
    rows, new_labels = synthetic_labels(kept_by_label, ctx.config.llm.model)
    ctx.store.add_examples(rows, new_labels, round_=round_ if topup else None)
    report.added = {label: len(texts) for label, texts in kept_by_label.items()}
    return report


def llm_check(ctx: LabelContext, label: str, texts: list[str], round_: int | None) -> list[bool]:
    from synthloop.synth_checks import llm_verdicts

    return llm_verdicts(ctx, {label: texts}, round_).get(label, []) if texts else []


def consistent(ctx: LabelContext, kept_by_label: dict[str, list[str]], wanted: dict[str, int],
               report: GenerationReport) -> dict[str, list[str]]:
    """The embedding filter over every class's candidates, then the balance cut ([synth] embedding_filter, balance)."""
    cfg = ctx.config.synth
    if cfg.embedding_filter and any(report.candidates.values()):
        from synthloop.synth_checks import embedding_verdicts

        # Judged against every candidate the LLM wrote for a class (the LLM's rejects too): the prototypes do
        # not depend on which filters are on, and the report can say what each filter alone would keep.
        everything = {lab: [c["text"] for c in cands] for lab, cands in report.candidates.items()}
        verdicts = embedding_verdicts(ctx, everything)
        for lab, cands in report.candidates.items():
            for cand, ok in zip(cands, verdicts.get(lab, [])):
                cand["embedding"] = ok
        rejected = {c["text"] for cands in report.candidates.values() for c in cands if c.get("embedding") is False}
        for lab, texts in kept_by_label.items():
            kept_by_label[lab] = [t for t in texts if t not in rejected]
            report.dropped["embedding disagreement"] += len(texts) - len(kept_by_label[lab])
    if cfg.balance:
        from synthloop.synth_checks import balanced

        before = sum(map(len, kept_by_label.values()))
        kept_by_label = balanced(kept_by_label, wanted)
        if before - sum(map(len, kept_by_label.values())):
            report.dropped["balance"] += before - sum(map(len, kept_by_label.values()))
    return kept_by_label


def topup(ctx: LabelContext, round_: int) -> GenerationReport | None:
    """Fresh synthetic examples for classes that real labels leave short, conditioned on their real texts."""
    import time

    cfg, task = ctx.config.synth, ctx.task
    k = len(task.label_names)
    rows = ctx.store.training_set()
    real = [r for r in rows if r.real]
    needs = topup_needs(Counter(r.label for r in real),
                        Counter(r.label for r in rows) + Counter(lab for _, lab in task.examples()), task.label_names,
                        cfg.topup_threshold or 0.5 / k, cfg.topup_target or 0.75 / k, cfg.topup_max_per_round)
    # A resumed round (after a crash, or `synthloop query` then `round`) tops up what is left of its cap.
    already = ctx.store.synthetic_added(round_)
    needs = {lab: n for lab, n in ((lab, min(n, cfg.topup_max_per_round - already.get(lab, 0)))
                                   for lab, n in needs.items()) if n > 0}
    if not needs:
        return None
    if ctx.budget.spent_out:
        # The night's $ cap (nightly --max-cost) is spent: generation waits for a night with money left.
        return None
    examples = {label: [r.text for r in real if r.label == label][-20:] for label in needs}
    started = time.time()
    report = generate(ctx, needs, examples=examples, round_=round_, topup=True)
    # What generation spent is gone from what the labelers may spend tonight.
    ctx.budget.spend(ctx.store.llm_cost_since(started))
    return report
