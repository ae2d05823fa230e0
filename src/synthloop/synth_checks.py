"""Does a synthetic text (or a sub-topic) belong to the class it was written for? Checks for synthetic generation.

- by embedding: the text's nearest class prototype must be its own class. A prototype is the mean sentence
  embedding of what the task says about the class (name, description, examples: learn.models.label_prompts)
  and of that class's other candidate texts, so a text is judged against what the LLM wrote for each class,
  not against a label name alone (which is a weak prototype on, e.g., sentiment grades);
- by the LLM: the project's LLM labeler re-labels the text; it is kept when the label agrees;
- balance: every class cut to the size of the smallest, so that no class's survivors outweigh the others.

benchmarks/synthetic.md measures each of them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from synthloop.labelers.context import LabelContext


def embedder(ctx: LabelContext):
    """The sentence embedder the project's model uses (hybrid-lr: USE; else MiniLM), embeddings kept on disk
    in the project's feature store, so the model later reads the synthetic texts' vectors from there."""
    from synthloop.learn.embed import SentenceEmbedder
    from synthloop.learn.models import DEFAULT_EMBED_MODEL

    cfg = ctx.config.model
    model = cfg.embed_model or DEFAULT_EMBED_MODEL.get(cfg.name, "all-MiniLM-L6-v2")
    return SentenceEmbedder(model=model, store=ctx.feature_dir, max_chars=ctx.config.limits.max_text_chars)


def _prompt_vectors(ctx: LabelContext, emb) -> dict[str, np.ndarray]:
    from synthloop.learn.models import label_prompts

    prompts = label_prompts(ctx.task)
    out = {}
    for label in ctx.task.label_names:
        texts = prompts.get(label) or [label]
        out[label] = np.asarray(emb.embed(texts), dtype=float)
    return out


def fitting_subtopics(ctx: LabelContext, topics: dict[str, list[str]]) -> tuple[dict[str, list[str]], int]:
    """The sub-topics whose embedding is nearer their own class's prompts than any other class's (the LLM's
    lists drift: "Science and Technology" for World news); returns them and how many were dropped."""
    if not topics:
        return topics, 0
    emb = embedder(ctx)
    prompts = _prompt_vectors(ctx, emb)
    labels = list(prompts)
    protos = _normalized(np.stack([v.mean(axis=0) for v in prompts.values()]))
    kept, dropped = {}, 0
    for label, items in topics.items():
        # The sub-topic alone: prefixed with its class's name it would lean towards that class.
        sims = np.asarray(emb.embed(list(items)), dtype=float) @ protos.T
        fit = [t for t, row in zip(items, sims) if labels[int(row.argmax())] == label]
        dropped += len(items) - len(fit)
        if fit:
            kept[label] = fit
    return kept, dropped


def embedding_verdicts(ctx: LabelContext, texts_by_label: dict[str, list[str]]) -> dict[str, list[bool]]:
    """Per class, per text: is the text's nearest prototype its own class? Leave-one-out: a text's own vector
    is taken out of its class's prototype, so an odd text cannot vouch for itself."""
    emb = embedder(ctx)
    prompts = _prompt_vectors(ctx, emb)
    labels = list(prompts)
    vectors = {lab: np.asarray(emb.embed(texts_by_label.get(lab, [])), dtype=float).reshape(-1, prompts[lab].shape[1])
               for lab in labels}
    sums = {lab: prompts[lab].sum(axis=0) + vectors[lab].sum(axis=0) for lab in labels}
    counts = {lab: len(prompts[lab]) + len(vectors[lab]) for lab in labels}
    out: dict[str, list[bool]] = {}
    for label in labels:
        if label not in texts_by_label:
            continue
        verdicts = []
        for vec in vectors[label]:
            protos = []
            for other in labels:
                if other == label:
                    protos.append((sums[other] - vec) / (counts[other] - 1))
                else:
                    protos.append(sums[other] / counts[other])
            sims = _normalized(np.stack(protos)) @ vec
            verdicts.append(labels[int(sims.argmax())] == label)
        out[label] = verdicts
    return out


def llm_verdicts(ctx: LabelContext, texts_by_label: dict[str, list[str]], round_: int | None) -> dict[str, list[bool]]:
    """Per class, per text: does the LLM labeler, asked afresh, give the class it was written for?"""
    from synthloop.labelers.llm import label_texts

    out = {}
    for label, texts in texts_by_label.items():
        outcomes = label_texts(ctx, texts, purpose="filter", round_=round_) if texts else []
        out[label] = [o.label == label for o in outcomes]
    return out


def balanced(texts_by_label: dict[str, list[str]], wanted: dict[str, int]) -> dict[str, list[str]]:
    """Every class asked for the same number cut to the smallest survivor count among them (a top-up asks
    for different numbers on purpose: left as it is)."""
    if len(set(wanted.values())) != 1 or len(texts_by_label) < 2:
        return texts_by_label
    least = min(len(v) for v in texts_by_label.values())
    return {lab: texts[:least] for lab, texts in texts_by_label.items()}


def keep(texts: Sequence[str], verdicts: Sequence[bool]) -> list[str]:
    return [t for t, ok in zip(texts, verdicts) if ok]


def _normalized(m: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    return m / np.clip(norms, 1e-12, None)
