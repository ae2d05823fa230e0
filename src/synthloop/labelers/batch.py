"""The Batch API labeler: queries go out as one OpenAI Batch API job at half price, and a later run (the next
night) collects the answers. The prompts, the answer schema, the validation and the meaning of an answer are
the LLM labeler's own (synthloop.labelers.llm); only the transport differs.

Each job is a row of the store's jobs table (a `Job`, its external id the batch id), written (by the round,
with the queries marked submitted) as soon as the API returns its id, so a run killed after submitting resumes
without submitting the same queries again. A job is "open" until its answers are downloaded, "answered" once
its usage is recorded (exactly once, in the same transaction), and "done" once none of its queries is pending
any more ("lost" if the API no longer knows it: its queries go into the next job).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import ClassVar

import openai

from synthloop.labelers.base import Collected, Submitted
from synthloop.labelers.context import LabelContext
from synthloop.labelers.llm import MAX_ANSWER_TOKENS, answer_model, estimated_cost, few_shot_examples, labeling_messages, outcome_of
from synthloop.llm.batch import batch_results, submit_batch
from synthloop.llm.pricing import BATCH_DISCOUNT
from synthloop.store import Job, JobStatus, NewLabel, Query

KIND = "llm-batch"  # the jobs' kind in the store: this labeler's name
PURPOSE = "label-batch"

log = logging.getLogger(__name__)


def jobs(store, states: Sequence[str] = (JobStatus.OPEN, JobStatus.ANSWERED)) -> dict[str, Job]:
    """Batch jobs by batch id, oldest first, in the given states."""
    return store.jobs(KIND, [JobStatus(s) for s in states])


class BatchLabeler:
    name = "llm-batch"
    defers_on: ClassVar[tuple[type[BaseException], ...]] = ()

    def __init__(self, ctx: LabelContext):
        self.ctx = ctx

    # submit -------------------------------------------------------------------------------------
    def submit(self, queries: Sequence[Query]) -> Submitted:
        """One job for every pending query of this labeler not already in a job: tonight's, plus those an
        earlier night's budget left out (oldest first). Never submits a query twice."""
        store = self.ctx.store
        in_job = {eid for job in jobs(store).values() for eid in job.example_ids}
        candidates = {q.id: q for q in store.queries(status="pending", routed_to=self.name)}
        candidates.update({q.id: q for q in queries if q.status == "pending"})
        todo = [candidates[k] for k in sorted(candidates) if candidates[k].example_id not in in_job]
        if not todo:
            return Submitted()
        task, cfg = self.ctx.task, self.ctx.config.llm
        shots = few_shot_examples(store, task, cfg.few_shot)
        messages = [labeling_messages(task, q.text, shots, cfg.abstain, self.ctx.config.limits.max_text_chars)
                    for q in todo]
        costs = [estimated_cost(cfg, m) * BATCH_DISCOUNT for m in messages]
        budget = self.ctx.budget
        # A batch is paid when it finishes, but committed now: tonight's budget bounds it, at its estimate.
        fit = budget.affordable(costs)
        todo, messages, costs = todo[:fit], messages[:fit], costs[:fit]
        if not todo:
            log.info("llm-batch: the budget left ($%.4f) does not cover one more query; the rest stay pending",
                     budget.left)
            return Submitted()
        client = self.ctx.llm_client()
        batch_id = submit_batch(client, [(q.example_id, m) for q, m in zip(todo, messages)], answer_model(task, cfg.abstain),
                                metadata={"synthloop": "llm-batch"}, temperature=cfg.label_temperature,
                                logprobs=cfg.logprobs, max_tokens=MAX_ANSWER_TOKENS)
        estimate = sum(costs)
        job = Job(KIND, batch_id, JobStatus.OPEN, tuple(q.example_id for q in todo), model=client.model,
                  round=store.current_round(), estimated_cost=estimate, created_at=time.time())
        budget.spend(estimate)
        log.info("llm-batch: submitted %s with %d queries (estimated $%.4f)", batch_id, len(todo), estimate)
        return Submitted(list(job.example_ids), jobs=[job])

    # collect ------------------------------------------------------------------------------------
    def collect(self) -> Collected:
        """Labels from every job that has finished; a job still running (or an API that does not answer
        now) is left for the next call. Never waits."""
        store = self.ctx.store
        pending = {q.example_id for q in store.queries(status="pending", routed_to=self.name)}
        out = Collected()
        for batch_id, job in jobs(store).items():
            waiting = [eid for eid in job.example_ids if eid in pending]
            if job.status is JobStatus.ANSWERED and not waiting:
                out.jobs.append(dataclasses.replace(job, status=JobStatus.DONE, detail={**job.detail, "done_at": time.time()}))
                continue
            out += self._collect_job(batch_id, job, waiting)
        return out

    def _client(self, model: str):
        client = self.ctx.llm_client()
        if client.model == model:
            return client
        # The project's model changed since the job went out: its answers are priced as the model that gave them.
        other = copy.copy(client)
        other.model = model
        return other

    def _collect_job(self, batch_id: str, job: Job, waiting: list[str]) -> Collected:
        store, model = self.ctx.store, job.model or self.ctx.llm_client().model
        client = self._client(model)
        try:
            batch = client.sdk.batches.retrieve(batch_id)
            results = batch_results(client, batch, answer_model(self.ctx.task, self.ctx.config.llm.abstain))
        except (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError, openai.InternalServerError) as err:
            log.warning("llm-batch: cannot reach the Batch API for %s now (%s); trying again next run", batch_id,
                        type(err).__name__)
            return Collected()
        except openai.NotFoundError:
            # Gone (deleted, or another account's): its queries leave the job, so the next submit sends them again.
            log.warning("llm-batch: %s is unknown to %s; its %d pending queries go into the next job", batch_id,
                        client.base_url or "the OpenAI API", len(waiting))
            return Collected(jobs=[dataclasses.replace(job, status=JobStatus.LOST, error="unknown to the Batch API",
                                                       detail={**job.detail, "lost_at": time.time()})])
        if results is None:
            return Collected()
        status = batch.status
        out = Collected()
        if job.status is JobStatus.OPEN:  # its usage goes to the store exactly once, with the job marked answered
            round_ = store.current_round()
            calls = [{"purpose": PURPOSE, "model": model, "prompt_tokens": r.usage.prompt_tokens,
                      "completion_tokens": r.usage.completion_tokens, "cost": r.usage.cost, "latency": 0.0,
                      "cached": False, "ok": r.value is not None, "round": round_} for r in results.values()]
            job = dataclasses.replace(job, status=JobStatus.ANSWERED, cost=sum(r.usage.cost for r in results.values()),
                                      detail={**job.detail, "status": status, "answered_at": time.time()})
            out = Collected(llm_calls=calls, jobs=[job])
        for eid in waiting:
            result = results.get(eid)
            if result is None:  # an expired or cancelled batch answers only part of its requests
                out.failed[eid] = f"llm-batch: no answer (batch {status})"
                continue
            outcome = outcome_of(result)
            if outcome.label is not None:
                out.labels.append(NewLabel(eid, outcome.label, f"llm:{model}", outcome.confidence, outcome.cost,
                                           meta={"confidence_from": outcome.confidence_from, "batch": batch_id}))
            elif outcome.abstained:
                out.skipped[eid] = "llm abstained"
            else:
                out.failed[eid] = f"llm-batch: {outcome.error or 'invalid answer'}"
        if out.failed:
            log.warning("llm-batch: %d answers of %s failed or were invalid (batch status %s)", len(out.failed),
                        batch_id, status)
        return out
