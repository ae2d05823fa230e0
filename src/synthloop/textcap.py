"""How much of a text the model's featurizer and LLM prompts see: `[limits] max_text_chars`. The store keeps
every text whole; only what is computed from it is bounded."""

from __future__ import annotations

# Characters of one text that featurizers and LLM prompts see ([limits] max_text_chars; the store keeps the whole
# text). One 10 MB text made a round take 54 s and 2.75 GB (TF-IDF's character n-grams); 10,000 characters is
# ~1,500-2,500 words, more than the texts classifiers of this kind are for (messages, reviews, tickets, news items)
# and far more than the sentence embedders read (256 tokens); it costs a labeling prompt ~2,500 tokens at most.
DEFAULT_MAX_TEXT_CHARS = 10_000


def cap_texts(texts, max_chars: int | None) -> list[str]:
    """The texts cut to max_chars characters (None: as they are)."""
    texts = [str(t) for t in texts]
    return texts if max_chars is None else [t[:max_chars] for t in texts]


class TextCap:
    """A vectorizer's `preprocessor`: the text cut to max_chars, then lowercased (what scikit-learn's own
    preprocessing does), so every route into a fitted TF-IDF or hashing vectorizer is capped, whoever calls it.
    A plain class with a fixed repr: the featurizer version (feature_rows.featurizer_version) hashes it."""

    def __init__(self, max_chars: int):
        self.max_chars = max_chars

    def __call__(self, text: str) -> str:
        return text[:self.max_chars].lower()

    def __repr__(self) -> str:
        return f"TextCap({self.max_chars})"

    def __eq__(self, other) -> bool:
        return isinstance(other, TextCap) and other.max_chars == self.max_chars

    def __hash__(self) -> int:
        return hash(("TextCap", self.max_chars))


def count_over(texts, max_chars: int) -> int:
    return sum(1 for t in texts if len(t) > max_chars)
