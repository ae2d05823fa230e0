"""Synthetic generation, its filters, the consistency filter and the top-up arithmetic, against a local
OpenAI-compatible server whose answers the test writes (deterministic, unlike a real model)."""

from __future__ import annotations

import json
import math
import random
import re
from collections import Counter

import pytest
from llm_servers import FaultServer

from synthloop.llm.quoting import unquote
from synthloop.synth import PROMPT_VERSION, GenerationReport, NearDuplicateIndex, filter_texts, topup_needs

SECRET = "sk-test-synth-0123456789"


@pytest.fixture(scope="module")
def server():
    with FaultServer() as srv:
        yield srv


@pytest.fixture
def synth_project(project, small_pool, server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    cfg = project.config
    cfg.llm.base_url, cfg.llm.model, cfg.llm.response_format = server.base_url, "gpt-4o-mini", "json_object_schema"
    cfg.llm.timeout, cfg.llm.max_retries, cfg.llm.concurrency = 2.0, 0, 1
    cfg.synth.per_call = 2
    project.import_file(small_pool / "pool.csv", label_col="label", gold=True)
    return project


def prompt_of(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"])


def class_of(body: dict) -> str:
    return re.search(r"Class(?: to write)?: (\w+)", prompt_of(body)).group(1)


WORDS = ("apple river silver window garden rocket pencil marble summer violin canyon ladder copper meadow "
         "harbor jungle lantern mirror nickel orchid puzzle quartz saddle tunnel velvet walnut yellow zebra anchor "
         "basket candle dragon feather glacier hammer island jacket kettle lemon magnet needle ocean parrot").split()


class Writer:
    """Answers sub-topic, generation and labeling requests the way a well-behaved LLM would. Each generated
    text is a new draw of words, so texts are neither exact nor near duplicates unless a test asks for them."""

    def __init__(self, extra: dict[str, list[str]] | None = None, relabel: set[int] | None = None):
        self.made: dict[str, int] = {}  # text -> its number
        self.extra = extra or {}  # class -> texts to slip into its first answer
        self.relabel = relabel or set()  # numbers of the texts the labeler puts in the other class
        self.kinds: Counter = Counter()

    def text(self, label: str) -> str:
        n = len(self.made) + 1
        words = random.Random(n).sample(WORDS, 6)
        text = f"{'offer' if label == 'spam' else 'note'} {' '.join(words)}"
        self.made[text] = n
        return text

    def __call__(self, body: dict) -> tuple:
        prompt = prompt_of(body)
        if "sub-topics" in prompt:
            self.kinds["subtopics"] += 1
            label = class_of(body)
            return ("content", json.dumps({"subtopics": [f"{label} topic {i}" for i in range(3)]}))
        if prompt.startswith("You label texts"):
            self.kinds["label"] += 1
            text = unquote(body["messages"][-1]["content"])
            label = "spam" if text.startswith("offer") else "ham"
            if self.made.get(text) in self.relabel:
                label = "ham" if label == "spam" else "spam"
            return ("content", json.dumps({"label": label, "confidence": 0.9}))
        self.kinds["generate"] += 1
        label = class_of(body)
        texts = self.extra.pop(label, [])
        while len(texts) < 2:
            texts.append(self.text(label))
        return ("content", json.dumps({"texts": texts}))


def stored_synthetic(project) -> list[tuple]:
    return [r for r in project.store.training_set() if r[3].startswith("synthetic:")]


def test_generate_stores_synthetic_examples_with_their_provenance(synth_project, server):
    writer = Writer()
    server.reset(writer)
    report = synth_project.generate(4)
    assert report.added == {"ham": 4, "spam": 4} and report.failed_calls == 0
    rows = stored_synthetic(synth_project)
    assert Counter(r[2] for r in rows) == {"ham": 4, "spam": 4}
    assert {r[3] for r in rows} == {"synthetic:gpt-4o-mini"}
    import sqlalchemy as sa

    with synth_project.store.engine.connect() as conn:
        metas = [json.loads(m) for (m,) in conn.execute(sa.text("select meta from examples where origin = 'synthetic'"))]
    assert len(metas) == 8 and all(m["prompt_version"] == PROMPT_VERSION and m["model"] == "gpt-4o-mini" for m in metas)
    # One sub-topic request per class, then each generation prompt names one of that class's sub-topics.
    assert writer.kinds["subtopics"] == 2
    prompts = [prompt_of(r["body"]) for r in server.requests if "Write 2 new" in prompt_of(r["body"])]
    assert prompts and all(re.search(r"Sub-topic: (ham|spam) topic \d\.", p) for p in prompts)
    # Attributed to the round its data feeds (round 0: no round has run yet).
    [by_round] = synth_project.store.llm_usage_by_round()
    assert by_round.round == 0 and by_round.calls == len(server.requests)


def test_filters_drop_empty_short_and_duplicate_texts(synth_project, server):
    pool_text = next(t for t in synth_project.store.unlabeled_pool()[1] if 30 <= len(t) <= 150)
    extra = {"spam": [pool_text, pool_text.upper() + "!", "          ", "tiny      x"],  # pool twins, empty, short
             "ham": ["a fresh ham note for the model", "a fresh ham note for the model!"]}  # twins in one answer
    server.reset(Writer(extra=extra))
    synth_project.config.synth.per_call = 4
    synth_project.config.synth.min_chars = 10
    synth_project.config.synth.subtopics = 0
    report = synth_project.generate(2)
    assert report.added == {"ham": 2, "spam": 2}
    # A pool text comes back as a near duplicate (cosine 1) before the exact check against the store sees it.
    assert report.dropped["exact duplicate"] + report.dropped["near duplicate"] == 3
    assert report.dropped["empty"] == 1 and report.dropped["length"] == 1
    texts = [r[1] for r in stored_synthetic(synth_project)]
    assert pool_text not in texts and pool_text.upper() + "!" not in texts
    assert "a fresh ham note for the model" in texts and "a fresh ham note for the model!" not in texts


def test_generating_again_draws_new_prompts_and_skips_what_is_stored(synth_project, server):
    server.reset(Writer())
    synth_project.config.synth.subtopics = 0
    synth_project.generate({"spam": 2})
    first = [r["body"]["seed"] for r in server.requests]
    synth_project.generate({"spam": 2})
    second = [r["body"]["seed"] for r in server.requests[len(first):]]
    # The same seeds would be answered from the cache with texts already stored, and dropped as duplicates.
    assert second and not set(first) & set(second)
    assert len(stored_synthetic(synth_project)) == 4


def test_consistency_filter_drops_texts_the_labeler_puts_elsewhere(synth_project, server):
    writer = Writer(relabel={2, 4})  # the labeler says the 2nd and 4th spam texts are ham
    server.reset(writer)
    synth_project.config.synth.subtopics = 0
    report = synth_project.generate({"spam": 4}, consistency_filter=True)
    # The two rejected texts are made up by one more request (texts 5 and 6), each of them re-labeled too.
    assert writer.kinds["label"] == 6 and report.dropped["label disagreement"] == 2
    assert report.added == {"spam": 4}
    numbers = sorted(writer.made[r[1]] for r in stored_synthetic(synth_project))
    assert numbers == [1, 3, 5, 6]
    assert [c["llm"] for c in report.candidates["spam"]] == [True, False, True, False, True, True]
    usage = {u.purpose: u for u in synth_project.store.llm_usage()}
    assert usage["filter"].calls == 6 and usage["generate"].calls == 3


def test_round_zero_trains_on_synthetic_data_down_weighted(synth_project, server):
    server.reset(Writer())
    synth_project.config.synth.subtopics = 0
    synth_project.config.model.synthetic_weight = 0.25
    synth_project.generate(3)
    ids, texts, labels, weights = synth_project.training_data()
    synthetic = {r[0] for r in stored_synthetic(synth_project)}
    assert synthetic and all(w == 0.25 for i, w in zip(ids, weights) if i in synthetic or i.startswith("task:"))
    result = synth_project.round()
    assert result.number == 0 and synth_project.store.latest_model().n_train == len(ids)
    from synthloop.store import NewLabel

    eid = synth_project.store.unlabeled_pool()[0][0]
    synth_project.store.record_labels([NewLabel(eid, "spam", "human:test")], None)
    ids, _, _, weights = synth_project.training_data()
    assert dict(zip(ids, weights))[eid] == 1.0  # a real label counts in full


def test_topup_fills_a_minority_class_to_its_target_share(synth_project, server):
    from synthloop.store import NewLabel

    server.reset(Writer())
    cfg = synth_project.config.synth
    cfg.subtopics, cfg.topup_threshold, cfg.topup_target, cfg.topup_max_per_round = 0, 0.3, 0.4, 50
    ids, _ = synth_project.store.unlabeled_pool()
    synth_project.store.record_labels([NewLabel(i, "ham", "human:t") for i in ids[:9]]
                                      + [NewLabel(ids[9], "spam", "human:t")], None)
    report = synth_project.topup(round_=1)
    # spam is 1 of 10 real labels (< 0.3); with the task's examples it has 1 + s of 10 + t training rows, and
    # reaching 0.4 of them takes ceil((0.4 * T - c) / 0.6) more.
    task_counts = Counter(lab for _, lab in synth_project.task.examples())
    total, have = 10 + sum(task_counts.values()), 1 + task_counts["spam"]
    expected = math.ceil((0.4 * total - have) / 0.6)
    assert report.requested == {"spam": expected} and report.added == {"spam": expected}
    generated = [prompt_of(r["body"]) for r in server.requests]
    real_spam = synth_project.store.training_set()
    spam_text = next(r[1] for r in real_spam if r[3] == "human:t" and r[2] == "spam")
    assert all(spam_text in p for p in generated)  # conditioned on the class's real labeled texts


def test_a_resumed_round_tops_up_only_what_is_left_of_its_cap(synth_project, server):
    from synthloop.store import NewLabel

    server.reset(Writer())
    cfg = synth_project.config.synth
    cfg.subtopics, cfg.topup, cfg.topup_threshold, cfg.topup_target, cfg.topup_max_per_round = 0, True, 0.45, 0.5, 2
    synth_project.config.loop.batch_size = 5
    ids, _ = synth_project.store.unlabeled_pool()
    synth_project.store.record_labels([NewLabel(i, "ham", "human:t") for i in ids[:20]], None)
    first = synth_project.round(route=False)  # what `synthloop query` does: the round stays open
    assert synth_project.store.round(first.number).counts["synthetic_added"] == {"spam": 2}
    calls = server.requests[:]
    again = synth_project.round()  # `synthloop round` resumes it: spam has had its 2 this round
    assert again.number == first.number and server.requests == calls
    assert synth_project.store.round(first.number).counts["synthetic_added"] == {"spam": 2}
    assert sum(1 for r in stored_synthetic(synth_project) if r[2] == "spam") == 2
    nxt = synth_project.round()  # a new round has a cap of its own
    assert synth_project.store.round(nxt.number).counts["synthetic_added"] == {"spam": 2}


def test_a_negative_count_is_refused_before_any_request(synth_project, server):
    from synthloop import SynthloopError

    server.reset(Writer())
    with pytest.raises(SynthloopError, match="must be 0 or more.*--per-class N with N >= 0"):
        synth_project.generate(-3)
    assert server.requests == [] and stored_synthetic(synth_project) == []


def test_topup_needs_arithmetic():
    # 2 of 20 real labels are spam (10% < 25%): spam needs (0.4*T - c) / 0.6 more to make 40% of T.
    needs = topup_needs({"ham": 18, "spam": 2}, {"ham": 18, "spam": 2}, ["ham", "spam"], 0.25, 0.4, cap=100)
    assert needs == {"spam": 10}  # (8 - 2) / 0.6 = 10: then 12 of 30 = 0.4
    assert topup_needs({"ham": 18, "spam": 2}, {"ham": 18, "spam": 2}, ["ham", "spam"], 0.25, 0.4, cap=4) == {"spam": 4}
    assert topup_needs({"ham": 10, "spam": 10}, {"ham": 10, "spam": 10}, ["ham", "spam"], 0.25, 0.4, cap=100) == {}
    assert topup_needs({}, {}, ["ham", "spam"], 0.25, 0.4, cap=100) == {}
    # Synthetic examples already there count towards the share.
    assert topup_needs({"ham": 18, "spam": 2}, {"ham": 18, "spam": 12}, ["ham", "spam"], 0.25, 0.4, cap=100) == {}


def test_subtopics_lose_numbering_duplicates_and_empty_entries():
    from synthloop.synth import clean_subtopics

    raw = ["1. SMS text message", "2) sms text message", "...", "- prize draws", "  3.  ", "•  delivery   notices"]
    assert clean_subtopics(raw) == ["SMS text message", "prize draws", "delivery notices"]


def test_filter_texts_unit():
    report = GenerationReport(requested={})
    index = NearDuplicateIndex(0.9, ["Call now to claim your free prize today"])
    seen: set[str] = set()
    kept = filter_texts(["  Hello   there,  friend  ", "Hello there, friend", "", "x",
                         "Call now to claim your free prize today!", "y" * 500, "A different message entirely"],
                        "ham", seen, index, 5, 100, report)
    assert kept == ["Hello there, friend", "A different message entirely"]
    assert report.dropped == {"exact duplicate": 1, "empty": 1, "length": 2, "near duplicate": 1}


def test_few_shot_examples_are_balanced_and_prefer_real_labels(synth_project):
    from synthloop.labelers.llm import few_shot_examples
    from synthloop.store import NewLabel

    ids, texts = synth_project.store.unlabeled_pool()
    synth_project.store.record_labels([NewLabel(ids[i], "ham", "human:t") for i in range(5)]
                                      + [NewLabel(ids[5], "spam", "oracle")], None)
    shots = few_shot_examples(synth_project.store, synth_project.task, 2)
    assert Counter(lab for _, lab in shots) == {"ham": 2, "spam": 2}
    real = dict(zip(ids, texts))
    spam_shots = [t for t, lab in shots if lab == "spam"]
    assert spam_shots[0] == real[ids[5]]  # the real label first, then the task's own example
    assert spam_shots[1] in [t for t, lab in synth_project.task.examples() if lab == "spam"]


def test_logprob_confidence_is_used_where_the_server_gives_it(synth_project, server):
    server.reset(("logprobs", '{"label": "spam", "confidence": 0.3}'))
    synth_project.config.loop.batch_size = 3
    synth_project.round(labeler="llm")
    import sqlalchemy as sa

    with synth_project.store.engine.connect() as conn:
        rows = conn.execute(sa.text("select confidence, meta from labels where source like 'llm:%'")).all()
    # The fault server gives each character probability 0.9: "spam" is four of them, not the self-reported 0.3.
    assert len(rows) == 3
    assert all(c == pytest.approx(0.9 ** 4) and json.loads(m)["confidence_from"] == "logprobs" for c, m in rows)
    assert all(r["body"]["logprobs"] is True and r["body"]["top_logprobs"] == 1 for r in server.requests)


def test_abstain_can_be_turned_off(synth_project, server):
    server.reset(("content", '{"label": "abstain", "confidence": 0.1}'))
    synth_project.config.llm.abstain = False
    synth_project.config.loop.batch_size = 2
    synth_project.round(labeler="llm")
    body = server.requests[0]["body"]
    assert "abstain" not in json.dumps(body["response_format"]["schema"])
    assert "abstain" not in prompt_of(body)
    # "abstain" is now off the schema: a failure, not a skip.
    assert synth_project.store.query_counts() == {"failed": 2}


def test_concurrency_is_bounded(server):
    from pydantic import BaseModel

    from synthloop.llm.client import LLMClient

    class Answer(BaseModel):
        label: str

    server.reset(("delay", 0.3, '{"label": "x"}'))
    client = LLMClient("gpt-4o-mini", base_url=server.base_url, api_key=SECRET, concurrency=2,
                       response_format="json_object_schema")
    results = client.complete_json_many([[{"role": "user", "content": f"t{i}"}] for i in range(6)], Answer)
    assert all(r.ok for r in results)
    times = sorted(r["time"] for r in server.requests)
    # With two at a time, a third request can only start once one of the first two has had its 0.3 s answer.
    assert all(times[i + 2] - times[i] >= 0.25 for i in range(len(times) - 2))
    assert any(times[i + 1] - times[i] < 0.15 for i in range(len(times) - 1))  # but two do run together


def test_generation_answer_schema_is_bounded(synth_project, server):
    server.reset(Writer())
    synth_project.config.synth.subtopics = 0
    synth_project.config.synth.max_chars = 50
    synth_project.generate({"ham": 2})
    schema = server.requests[0]["body"]["response_format"]["schema"]
    texts = schema["properties"]["texts"]
    assert texts["maxItems"] == 2 and texts["items"]["maxLength"] == 50


SPAM = ["WIN a free cruise for two! Text CLAIM to 80888 now, T&Cs apply",
        "Congratulations, you have won a 500 pound shopping voucher, call 09061234567 to claim",
        "URGENT: your prize draw entry was selected, reply YES to receive your cash award"]
HAM = ["Running late, see you at the cafe in ten minutes",
       "Can you pick up some milk on your way home tonight?",
       "Did you finish the essay for tomorrow's class?"]
OFF_CLASS = "Hi mum, I will be home for dinner at seven, love you"


def test_generation_shows_real_pool_texts_as_examples_of_form(synth_project, server):
    server.reset(Writer())
    synth_project.config.synth.subtopics = 0
    synth_project.config.synth.style_examples = 2
    synth_project.generate({"spam": 2})
    pool = set(synth_project.store.unlabeled_pool()[1])
    [body] = [r["body"] for r in server.requests]
    prompt = prompt_of(body)
    section = prompt.split("of any class (unlabeled)")[1].split("Each text is quoted")[0]
    shown = re.findall(r"<text>(.*?)</text>", section)
    assert len(shown) == 2 and all(" ".join(t.split()) in {" ".join(p.split()) for p in pool} for t in shown)
    assert "of any class (unlabeled)" in prompt and "Written by" not in prompt  # the pool sets the form, no persona


def test_without_style_examples_a_style_and_persona_are_sampled(synth_project, server):
    server.reset(Writer())
    synth_project.config.synth.subtopics = 0
    synth_project.config.synth.style_examples = 0
    synth_project.generate({"spam": 2})
    prompt = prompt_of(server.requests[0]["body"])
    assert "Written by" in prompt and "of any class (unlabeled)" not in prompt


def test_subtopics_that_fit_another_class_are_dropped(synth_project, server):
    topics = {"spam": ["prize draws and cash awards", "premium-rate ringtone offers", "dinner plans with family"],
              "ham": ["meeting friends for coffee", "reminders about homework"]}

    def writer(body):
        prompt = prompt_of(body)
        if "sub-topics" in prompt:
            return ("content", json.dumps({"subtopics": topics[class_of(body)]}))
        return Writer()(body)

    server.reset(writer)
    synth_project.config.synth.subtopics = 3
    report = synth_project.generate({"spam": 2, "ham": 2})
    asked = set(re.findall(r"Sub-topic: (.*?)\.\n", "\n".join(prompt_of(r["body"]) for r in server.requests)))
    assert report.dropped_subtopics == 1 and "dinner plans with family" not in asked
    assert asked and asked <= set(topics["spam"][:2]) | set(topics["ham"])


def test_subtopic_check_off_keeps_every_subtopic(synth_project, server):
    from synthloop.synth import draw_subtopics

    server.reset(lambda body: ("content", json.dumps({"subtopics": ["dinner plans with family"]})))
    synth_project.config.synth.subtopics, synth_project.config.synth.subtopic_check = 1, False
    report = synth_project.generate({"spam": 0})
    assert report.dropped_subtopics == 0
    assert draw_subtopics(synth_project.label_context(), ["spam"], 0) == {"spam": ["dinner plans with family"]}


def fixed_writer(answers: dict[str, list[str]]):
    def answer(body):
        return ("content", json.dumps({"texts": answers[class_of(body)]}))
    return answer


def test_embedding_filter_drops_a_text_nearer_another_class_and_balance_evens_out(synth_project, server):
    server.reset(fixed_writer({"spam": [*SPAM, OFF_CLASS], "ham": HAM + ["Are we still on for football on Sunday?"]}))
    cfg = synth_project.config.synth
    cfg.subtopics, cfg.per_call, cfg.embedding_filter, cfg.balance = 0, 4, True, True
    report = synth_project.generate(4)
    verdicts = {c["text"]: c["embedding"] for cands in report.candidates.values() for c in cands}
    assert verdicts[OFF_CLASS] is False and all(verdicts[t] for t in SPAM + HAM)
    assert report.dropped["embedding disagreement"] == 1
    # spam is left with 3: ham is cut to 3 as well.
    assert report.added == {"spam": 3, "ham": 3} and report.dropped["balance"] == 1
    stored = {r[1]: r[2] for r in stored_synthetic(synth_project)}
    assert OFF_CLASS not in stored and set(SPAM) <= set(stored) and len(stored) == 6
    assert "filter" not in {u.purpose for u in synth_project.store.llm_usage()}  # no LLM re-labeling


def test_label_checks_are_off_unless_configured(synth_project, server):
    server.reset(fixed_writer({"spam": [*SPAM, OFF_CLASS], "ham": HAM}))
    synth_project.config.synth.subtopics, synth_project.config.synth.per_call = 0, 4
    report = synth_project.generate({"spam": 4, "ham": 3})
    assert report.added == {"spam": 4, "ham": 3}
    assert all(set(c) == {"text"} for cands in report.candidates.values() for c in cands)


def test_balance_cuts_equal_requests_only():
    from synthloop.synth_checks import balanced

    kept = {"a": ["1", "2", "3"], "b": ["4"]}
    assert balanced(kept, {"a": 3, "b": 3}) == {"a": ["1"], "b": ["4"]}
    assert balanced(kept, {"a": 3, "b": 1}) == kept  # a top-up asks for different numbers on purpose


def test_quote_tags_a_model_copied_from_the_prompt_are_stripped():
    report = GenerationReport(requested={})
    kept = filter_texts(["</text> <text>A new study has found that sea levels rise.</<<"], "World", set(),
                        NearDuplicateIndex(0.9), 8, 200, report)
    assert kept == ["A new study has found that sea levels rise."]
