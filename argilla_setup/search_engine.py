"""In-process search engine for argilla-server, so a local server needs no Elasticsearch.

The index lives in this process only; launch.py rebuilds it from the database at start-up with the
server's own Reindexer, so the database stays the single source of truth. Behaviour follows the
Elasticsearch engine in argilla_server/search_engine/commons.py (filters, the "pending" response
status, sorting with missing values last, per-user random order, terms/stats metrics), except where
noted. Request handlers (uvicorn's event loop) and background jobs (an rq worker thread) share the
store, so every read and write holds one lock; no method awaits while holding it.
"""

import hashlib
import math
import re
import threading
from datetime import datetime, timezone
from typing import Any, Dict, Iterable, List, Optional, Union

from argilla_server._version import __version__ as server_version
from argilla_server.enums import MetadataPropertyType, ResponseStatusFilter, SimilarityOrder, SortOrder
from argilla_server.models import Dataset, MetadataProperty, Record, Response, Suggestion, User, VectorSettings
from argilla_server.search_engine.base import (
    AndFilter,
    Filter,
    FloatMetadataMetrics,
    IntegerMetadataMetrics,
    MetadataFilterScope,
    MetadataMetrics,
    Order,
    RangeFilter,
    RecordFilterScope,
    ResponseFilterScope,
    SearchEngine,
    SearchResponseItem,
    SearchResponses,
    SuggestionFilterScope,
    TermsFilter,
    TermsMetrics,
    TextQuery,
)

ENGINE_NAME = "inmemory"
MAX_TERMS = 2**14  # same bucket cap as the Elasticsearch engine

_LOCK = threading.RLock()
_INDEXES: Dict[str, "_Index"] = {}  # dataset id -> index
_RECORD_DATASET: Dict[str, str] = {}  # record id -> dataset id, for calls that pass only a record/response
_WORD = re.compile(r"\w+", re.UNICODE)


def _tokens(text: Any) -> List[str]:
    return _WORD.findall(str(text).lower()) if text is not None else []


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


class _Index:
    def __init__(self, dataset: Dataset):
        self.docs: Dict[str, dict] = {}  # insertion order doubles as Elasticsearch's _doc order
        self.configure(dataset)

    def configure(self, dataset: Dataset) -> None:
        # Image fields are not searchable in Elasticsearch either (mapping "enabled": false).
        self.text_fields = [f.name for f in dataset.fields if not f.is_image]
        self.metadata = {mp.name: mp.type for mp in dataset.metadata_properties}
        self.vectors = {str(vs.id): vs.dimensions for vs in dataset.vectors_settings}

    def field_tokens(self, doc: dict, field: Optional[str]) -> List[str]:
        names = [field] if field else list(doc["tokens"])
        return [t for name in names for t in doc["tokens"].get(name, [])]


def _index_for_dataset_id(dataset_id) -> "_Index":
    index = _INDEXES.get(str(dataset_id))
    if index is None:
        raise LookupError(f"search index for dataset {dataset_id} not found")
    return index


def _doc_for_record_id(record_id) -> Optional[dict]:
    dataset_id = _RECORD_DATASET.get(str(record_id))
    index = _INDEXES.get(dataset_id) if dataset_id else None
    return index.docs.get(str(record_id)) if index else None


def _response_doc(response: Response) -> dict:
    values = response.values or {}  # discarded responses may carry no values
    return {
        "id": str(response.id),
        "status": str(response.status),
        "user_id": str(response.user_id),
        "values": {q: (v or {}).get("value") for q, v in values.items()},
    }


def _suggestion_doc(suggestion: Suggestion) -> dict:
    return {"type": suggestion.type, "agent": suggestion.agent, "score": suggestion.score, "value": suggestion.value}


def _field_text(value: Any) -> List[str]:
    # Chat fields are lists of {role, content}; Elasticsearch indexes both sub-fields as text.
    if isinstance(value, list):
        tokens = []
        for item in value:
            tokens += _field_text(list(item.values()) if isinstance(item, dict) else item)
        return tokens
    return _tokens(value)


def _record_doc(index: _Index, record: Record) -> dict:
    fields = record.fields or {}
    metadata = {k: v for k, v in (record.metadata_ or {}).items() if k in index.metadata and v is not None}
    return {
        "id": str(record.id),
        "external_id": record.external_id,
        "status": str(record.status) if record.status is not None else None,
        "inserted_at": record.inserted_at,
        "updated_at": record.updated_at,
        "tokens": {name: _field_text(fields.get(name)) for name in index.text_fields},
        "metadata": metadata,
        "responses": [_response_doc(r) for r in record.responses or []],
        "suggestions": {s.question.name: _suggestion_doc(s) for s in record.suggestions or []},
        "vectors": {str(v.vector_settings_id): list(v.value) for v in record.vectors or [] if v.value},
    }


# ---------------------------------------------------------------------------------------------- values
def _num(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _as_datetime(value: Any) -> Optional[datetime]:
    # The database stores naive UTC; bounds may be ISO strings or epoch milliseconds (Elasticsearch's
    # default date formats).
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value / 1000, tz=timezone.utc).replace(tzinfo=None)
    if isinstance(value, datetime):
        parsed = value
    else:
        text = str(value).strip()
        if re.fullmatch(r"-?\d+(\.\d+)?", text):
            return _as_datetime(float(text))
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def _term_matches(value: Any, wanted: List[str]) -> bool:
    # Keyword fields compare strings exactly; numeric fields compare numbers (the API sends strings).
    for v in _as_list(value):
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            if any(_num(w) == float(v) for w in wanted):
                return True
        elif (str(v).lower() if isinstance(v, bool) else str(v)) in wanted:
            return True
    return False


def _in_range(value: Any, ge: Any, le: Any) -> bool:
    for v in _as_list(value):
        if isinstance(v, datetime):
            lo, hi = _as_datetime(ge), _as_datetime(le)
        elif _num(v) is not None and not isinstance(v, str):
            v, lo, hi = float(v), _num(ge), _num(le)
        else:
            v, lo, hi = str(v), (None if ge is None else str(ge)), (None if le is None else str(le))
        if (lo is None or v >= lo) and (hi is None or v <= hi):
            return True
    return False


def _value_filter(filter: Filter, value: Any) -> bool:
    if isinstance(filter, TermsFilter):
        return _term_matches(value, [str(v) for v in filter.values])
    if isinstance(filter, RangeFilter):
        return _in_range(value, filter.ge, filter.le)
    raise ValueError(f"Cannot process filter {filter}")


def _user_responses(doc: dict, user: Optional[User]) -> List[dict]:
    if user is None:
        return doc["responses"]
    return [r for r in doc["responses"] if r["user_id"] == str(user.id)]


def _scope_value(doc: dict, scope) -> Any:
    if isinstance(scope, MetadataFilterScope):
        return doc["metadata"].get(scope.metadata_property)
    if isinstance(scope, SuggestionFilterScope):
        return (doc["suggestions"].get(scope.question) or {}).get(scope.property or "value")
    if isinstance(scope, RecordFilterScope):
        return doc.get(scope.property)
    raise ValueError(f"Cannot process request for search scope {scope}")


def _matches(doc: dict, filter: Filter) -> bool:
    if isinstance(filter, AndFilter):
        return all(_matches(doc, f) for f in filter.filters)
    scope = filter.scope
    if not isinstance(scope, ResponseFilterScope):
        return _value_filter(filter, _scope_value(doc, scope))
    responses = _user_responses(doc, scope.user)
    if scope.question:
        return any(_value_filter(filter, r["values"].get(scope.question)) for r in responses)
    if scope.property == "status" and isinstance(filter, TermsFilter):
        statuses = [str(v) for v in filter.values]
        # "pending" means: no response from this user (or, without a user, no response at all).
        if ResponseStatusFilter.pending.value in statuses and not responses:
            return True
        return any(r["status"] in statuses for r in responses)
    raise ValueError(f"Cannot process filter scope {scope}")


# ---------------------------------------------------------------------------------------------- text query
def _parse_text_query(q: str) -> List[List[tuple]]:
    """A small subset of simple_query_string: OR with `|`, AND by default (the server asks for AND),
    `-` to negate, "quoted phrases", trailing `*` for prefixes. Returns alternatives of clauses
    (negated, kind, tokens), kind being "terms", "phrase" or "prefix"."""
    alternatives: List[List[tuple]] = [[]]
    for match in re.finditer(r'(-?)"([^"]*)"|(\|)|(\S+)', q):
        negated, phrase, bar, word = match.groups()
        if bar:
            alternatives.append([])
            continue
        if phrase is not None:
            toks = _tokens(phrase)
            if toks:
                alternatives[-1].append((bool(negated), "phrase", toks))
            continue
        neg = word.startswith("-") and len(word) > 1
        word = word.lstrip("+-").strip("()")
        if word.endswith("*") and _tokens(word):
            alternatives[-1].append((neg, "prefix", _tokens(word)))
        elif _tokens(word):
            alternatives[-1].append((neg, "terms", _tokens(word)))
    return [a for a in alternatives if a]


def _clause_hits(tokens: List[str], kind: str, wanted: List[str]) -> int:
    if kind == "terms":  # a word the analyzer splits ("e-mail") needs all its parts, in any order
        return min(tokens.count(w) for w in wanted)
    if kind == "phrase":
        n = len(wanted)
        return sum(1 for i in range(len(tokens) - n + 1) if tokens[i : i + n] == wanted)
    if kind == "prefix":
        head, last = wanted[:-1], wanted[-1]
        n = len(head)
        return sum(
            1
            for i in range(len(tokens) - n)
            if tokens[i : i + n] == head and tokens[i + n].startswith(last)
        )


def _text_scores(index: _Index, docs: List[dict], text: Optional[Union[TextQuery, str]]) -> Dict[str, float]:
    if text is None:
        return {d["id"]: 1.0 for d in docs}
    if isinstance(text, str):
        text = TextQuery(q=text)
    if text.field and text.field not in index.text_fields:
        raise ValueError(f"Field {text.field} not found in dataset")
    alternatives = _parse_text_query(text.q)
    doc_tokens = {d["id"]: index.field_tokens(d, text.field) for d in docs}
    n_docs = max(len(docs), 1)
    avg_len = sum(len(t) for t in doc_tokens.values()) / n_docs or 1.0
    scores: Dict[str, float] = {}
    for alternative in alternatives:
        positive = [(kind, toks) for neg, kind, toks in alternative if not neg]
        # BM25 over the clause's hit count, as Elasticsearch scores text fields.
        df = {i: sum(1 for t in doc_tokens.values() if _clause_hits(t, k, w)) for i, (k, w) in enumerate(positive)}
        for doc in docs:
            tokens = doc_tokens[doc["id"]]
            if any(_clause_hits(tokens, k, w) for neg, k, w in alternative if neg):
                continue
            hits = [_clause_hits(tokens, k, w) for k, w in positive]
            if not positive or not all(hits):
                continue
            score = 0.0
            for i, tf in enumerate(hits):
                idf = math.log(1 + (n_docs - df[i] + 0.5) / (df[i] + 0.5))
                score += idf * tf * 2.2 / (tf + 1.2 * (0.25 + 0.75 * len(tokens) / avg_len))
            scores[doc["id"]] = max(scores.get(doc["id"], 0.0), score)
    return scores


def _user_seeded_random(user_id: Any, record_id: str) -> float:
    # Stands in for Elasticsearch's random_score(seed=user): each annotator gets a stable, different order.
    digest = hashlib.blake2b(f"{user_id}:{record_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


# ---------------------------------------------------------------------------------------------- sorting
def _sort_value(doc: dict, order: Order) -> Any:
    scope = order.scope
    if isinstance(scope, ResponseFilterScope):
        key = scope.question or scope.property
        values = [
            v
            for r in _user_responses(doc, scope.user)
            for v in _as_list(r["values"].get(key) if scope.question else r.get(key))
        ]
        numbers = [_num(v) for v in values if _num(v) is not None and not isinstance(v, str)]
        if numbers:  # nested sort with mode "avg"
            return (0, sum(numbers) / len(numbers))
    else:
        values = _as_list(_scope_value(doc, scope))
    if not values:
        return None
    # Multi-valued fields sort by their smallest value ascending and their largest descending.
    keys = [_sort_key(v) for v in values]
    return min(keys) if order.order == SortOrder.asc else max(keys)


def _sort_key(value: Any) -> tuple:
    if isinstance(value, datetime):
        return (0, value.timestamp())
    if not isinstance(value, str) and _num(value) is not None:
        return (0, _num(value))
    return (1, str(value))


def _sorted(docs: List[dict], sort: List[Order]) -> List[dict]:
    # Stable passes from the least to the most significant key; missing values go last either way.
    for order in reversed(sort):
        keyed = [(_sort_value(d, order), d) for d in docs]
        present = [(k, d) for k, d in keyed if k is not None]
        missing = [d for k, d in keyed if k is None]
        present.sort(key=lambda kd: kd[0], reverse=order.order == SortOrder.desc)
        docs = [d for _, d in present] + missing
    return docs


def _cosine(a: List[float], b: List[float]) -> Optional[float]:
    na = math.sqrt(sum(x * x for x in a))
    nb = math.sqrt(sum(x * x for x in b))
    if not na or not nb or len(a) != len(b):
        return None
    return sum(x * y for x, y in zip(a, b)) / (na * nb)


def _terms_metrics(values_per_doc: Iterable[list]) -> TermsMetrics:
    total, counts = 0, {}
    for values in values_per_doc:
        total += len(values)
        for term in {str(v).lower() if isinstance(v, bool) else str(v) for v in values}:
            counts[term] = counts.get(term, 0) + 1
    buckets = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[: min(total, MAX_TERMS)]
    return TermsMetrics(total=total, values=[TermsMetrics.TermCount(term=t, count=c) for t, c in buckets])


@SearchEngine.register(engine_name=ENGINE_NAME)
class InMemorySearchEngine(SearchEngine):
    @classmethod
    async def new_instance(cls) -> "InMemorySearchEngine":
        return cls()

    async def close(self):
        pass  # the store outlives engine instances, which the server makes per request

    async def ping(self) -> bool:
        return True

    async def info(self) -> dict:
        with _LOCK:
            documents = sum(len(i.docs) for i in _INDEXES.values())
            return {
                "name": ENGINE_NAME,
                "distribution": "argilla_setup in-memory engine",
                "version": {"number": server_version},
                "indices": len(_INDEXES),
                "documents": documents,
            }

    async def create_index(self, dataset: Dataset):
        with _LOCK:
            index = _INDEXES.get(str(dataset.id))
            if index is None:
                _INDEXES[str(dataset.id)] = _Index(dataset)
            else:
                index.configure(dataset)

    async def delete_index(self, dataset: Dataset):
        with _LOCK:
            index = _INDEXES.pop(str(dataset.id), None)
            for record_id in index.docs if index else []:
                _RECORD_DATASET.pop(record_id, None)

    async def configure_metadata_property(self, dataset: Dataset, metadata_property: MetadataProperty):
        with _LOCK:
            _index_for_dataset_id(dataset.id).metadata[metadata_property.name] = metadata_property.type

    async def configure_index_vectors(self, vector_settings: VectorSettings):
        with _LOCK:
            index = _index_for_dataset_id(vector_settings.dataset_id)
            index.vectors[str(vector_settings.id)] = vector_settings.dimensions

    async def index_records(self, dataset: Dataset, records: Iterable[Record]):
        records = list(records)
        with _LOCK:
            index = _INDEXES.get(str(dataset.id))
            if index is None:  # Elasticsearch would create the index on first write too
                index = _INDEXES[str(dataset.id)] = _Index(dataset)
            for record in records:
                index.docs[str(record.id)] = _record_doc(index, record)
                _RECORD_DATASET[str(record.id)] = str(dataset.id)

    async def partial_record_update(self, record: Record, **update):
        with _LOCK:
            doc = _doc_for_record_id(record.id)
            if doc is None:
                raise LookupError(f"record {record.id} is not indexed")
            doc.update({k: (str(v) if k == "status" and v is not None else v) for k, v in update.items()})

    async def delete_records(self, dataset: Dataset, records: Iterable[Record]):
        with _LOCK:
            index = _INDEXES.get(str(dataset.id))
            for record in records:
                if index:
                    index.docs.pop(str(record.id), None)
                _RECORD_DATASET.pop(str(record.id), None)

    async def update_record_response(self, response: Response):
        with _LOCK:
            doc = _doc_for_record_id(response.record_id)
            if doc is None:
                raise LookupError(f"record {response.record_id} is not indexed")
            kept = [r for r in doc["responses"] if r["id"] != str(response.id)]
            doc["responses"] = kept + [_response_doc(response)]

    async def delete_record_response(self, response: Response):
        with _LOCK:
            doc = _doc_for_record_id(response.record_id)
            if doc is not None:
                doc["responses"] = [r for r in doc["responses"] if r["id"] != str(response.id)]

    async def update_record_suggestion(self, suggestion: Suggestion):
        with _LOCK:
            doc = _doc_for_record_id(suggestion.record_id)
            if doc is None:
                raise LookupError(f"record {suggestion.record_id} is not indexed")
            doc["suggestions"][suggestion.question.name] = _suggestion_doc(suggestion)

    async def delete_record_suggestion(self, suggestion: Suggestion):
        with _LOCK:
            doc = _doc_for_record_id(suggestion.record_id)
            if doc is not None:
                doc["suggestions"].pop(suggestion.question.name, None)

    async def get_dataset_progress(self, dataset: Dataset) -> dict:
        if dataset.is_draft:
            return {}
        with _LOCK:
            docs = list(_index_for_dataset_id(dataset.id).docs.values())
        metrics = _terms_metrics([_as_list(d["status"]) for d in docs])
        return {"total": metrics.total, **{m.term: m.count for m in metrics.values}}

    async def get_dataset_user_progress(self, dataset: Dataset, user: User) -> dict:
        # Counts this user's responses by status (Elasticsearch's version counts every response of the
        # records this user answered, which only differs when records have several annotators).
        if dataset.is_draft:
            return {}
        with _LOCK:
            docs = list(_index_for_dataset_id(dataset.id).docs.values())
            statuses = [[r["status"] for r in _user_responses(d, user)] for d in docs]
        metrics = _terms_metrics(s for s in statuses if s)
        return {"total": metrics.total, **{m.term: m.count for m in metrics.values}}

    def _candidates(self, dataset: Dataset, filter: Optional[Filter]) -> tuple:
        with _LOCK:
            index = _index_for_dataset_id(dataset.id)
            docs = [d for d in index.docs.values() if filter is None or _matches(d, filter)]
            return index, docs

    async def search(
        self,
        dataset: Dataset,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        sort: Optional[List[Order]] = None,
        offset: int = 0,
        limit: int = 100,
        user_id: Optional[Any] = None,
    ) -> SearchResponses:
        with _LOCK:
            index, docs = self._candidates(dataset, filter)
            scores = _text_scores(index, docs, query)
            docs = [d for d in docs if d["id"] in scores]
            if sort:
                # Like Elasticsearch, hits sorted by a field carry no score.
                ranked = [(d, None) for d in _sorted(docs, sort)]
            else:
                if user_id is not None:
                    scores = {k: s * _user_seeded_random(user_id, k) for k, s in scores.items()}
                ranked = sorted(((d, scores[d["id"]]) for d in docs), key=lambda ds: -ds[1])
        page = ranked[offset : offset + limit]
        items = [SearchResponseItem(record_id=d["id"], score=s) for d, s in page]
        return SearchResponses(items=items, total=len(ranked))

    async def similarity_search(
        self,
        dataset: Dataset,
        vector_settings: VectorSettings,
        value: Optional[List[float]] = None,
        record: Optional[Record] = None,
        query: Optional[Union[TextQuery, str]] = None,
        filter: Optional[Filter] = None,
        max_results: int = 100,
        order: SimilarityOrder = SimilarityOrder.most_similar,
        threshold: Optional[float] = None,
    ) -> SearchResponses:
        if bool(value) == bool(record):
            raise ValueError("Must provide either vector value or record to compute the similarity search")
        vector = value or record.vector_value_by_vector_settings(vector_settings)
        if not vector:
            raise ValueError("Cannot find a vector value to apply with provided info")
        if order == SimilarityOrder.least_similar:
            vector = [-x for x in vector]
        key = str(vector_settings.id)
        excluded = str(record.id) if record is not None else None
        with _LOCK:
            index, docs = self._candidates(dataset, filter)
            dimensions = index.vectors.get(key)
            if dimensions and len(vector) != dimensions:
                raise ValueError(f"vector has {len(vector)} dimensions, {vector_settings.name!r} needs {dimensions}")
            if query:  # the text query only narrows the candidates, as in the Elasticsearch kNN filter
                matched = _text_scores(index, docs, query)
                docs = [d for d in docs if d["id"] in matched]
            scored = []
            for doc in docs:
                cosine = _cosine(vector, doc["vectors"].get(key) or [])
                if cosine is not None and doc["id"] != excluded:
                    scored.append((doc["id"], (1 + cosine) / 2))  # Elasticsearch's cosine score
        scored.sort(key=lambda item: -item[1])
        scored = [s for s in scored[:max_results] if threshold is None or s[1] >= threshold]
        return SearchResponses(items=[SearchResponseItem(record_id=i, score=s) for i, s in scored], total=len(scored))

    async def compute_metrics_for(self, metadata_property: MetadataProperty) -> MetadataMetrics:
        name = metadata_property.name
        with _LOCK:
            docs = list(_index_for_dataset_id(metadata_property.dataset_id).docs.values())
            values = [_as_list(d["metadata"].get(name)) for d in docs]
        if metadata_property.type == MetadataPropertyType.terms:
            return _terms_metrics(v for v in values if v)
        numbers = [_num(v) for vs in values for v in vs if _num(v) is not None]
        low, high = (min(numbers), max(numbers)) if numbers else (None, None)
        if metadata_property.type == MetadataPropertyType.integer:
            return IntegerMetadataMetrics(
                min=None if low is None else int(low), max=None if high is None else int(high)
            )
        return FloatMetadataMetrics(min=low, max=high)
