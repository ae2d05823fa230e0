"""Second looks: the stored labels that the model's out-of-fold predictions doubt most (the report's label
quality check, cleanlab's ranking) go to a separate Argilla dataset, `<dataset>-recheck`, with the stored
label as the suggestion. What reviewers submit there is stored as `human:<username>`; among labels of the
same rank the newest wins, so a reviewer's correction replaces the label it re-checked.
"""

from __future__ import annotations

from synthloop.errors import SynthloopError
from synthloop.labelers.argilla import QUESTION, ArgillaLabeler, PullResult, PushResult, _sdk

SUFFIX = "-recheck"


def push_suspicious(project, n: int = 20, on_chunk=None) -> PushResult:
    from synthloop.report import label_quality

    if project.store.latest_model() is None:
        raise SynthloopError("no model yet: run `synthloop train` or a round first")
    _, model = project.load_model()
    quality = label_quality(project, model)
    rows = quality["suspicious"][:n]
    if not rows:
        raise SynthloopError(quality.get("note") or "no real labels to re-check yet")
    rg = _sdk()

    def to_records(chunk: list[dict]) -> list:
        return [rg.Record(
            id=row["id"],
            fields={"text": row["text"],
                    "hints": f"**Stored label:** {row['given']} ({row['source']})  \n"
                             f"**Model, out of fold:** {row['predicted']} "
                             f"(probability of the stored label {row['p_given']:.2f})"},
            metadata={"origin": "recheck", "strategy": "label-quality", "uncertainty": 1.0 - float(row["score"])},
            suggestions=[rg.Suggestion(question_name=QUESTION, value=row["given"], agent="stored-label")],
        ) for row in chunk]

    labeler = ArgillaLabeler(project, dataset_suffix=SUFFIX)
    pushed = labeler.log(rows, to_records, on_chunk=on_chunk)
    return PushResult(pushed, labeler.dataset_name, labeler.url)


def pull_rechecked(project) -> PullResult:
    labeler = ArgillaLabeler(project, dataset_suffix=SUFFIX)
    if labeler.existing_dataset() is None:
        return PullResult(0, 0)
    labels = labeler.resolve_all(labeler.responses())
    added = project.store.record_labels(labels, project.store.current_round())
    return PullResult(added, len({x.example_id for x in labels}), labeler.ties, labeler.waiting)
