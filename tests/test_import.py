import json

import pandas as pd
import pytest

from synthloop import SynthloopError
from synthloop.data import example_id


def snapshot(project):
    return project.store.count_examples(), project.store.label_counts()


def test_csv_jsonl_parquet_import_and_reimport(project, example_dir, tmp_path):
    frame = pd.read_csv(example_dir / "pool.csv").head(50)
    frame.to_json(tmp_path / "p.jsonl", orient="records", lines=True)
    frame.to_parquet(tmp_path / "p.parquet")
    first = project.import_file(example_dir / "pool.csv", label_col="label", gold=True)
    assert first.added == first.rows - first.duplicates_in_file > 1900
    again = project.import_file(example_dir / "pool.csv", label_col="label", gold=True)
    assert again.added == 0 and again.already_stored == first.added
    for path in (tmp_path / "p.jsonl", tmp_path / "p.parquet"):
        res = project.import_file(path, label_col="label", gold=True)
        assert res.added == 0 and res.already_stored == len(set(frame.text.str.strip()))
    assert project.store.count_examples() == {("pool", "pool"): first.added}


def test_ids_are_stable_hashes_or_user_ids(project, tmp_path):
    path = tmp_path / "d.csv"
    pd.DataFrame({"key": ["k1", "k2"], "body": ["hello there", "win a prize now"]}).to_csv(path, index=False)
    project.import_file(path, text_col="body", id_col="key")
    assert set(project.store.existing_ids(["k1", "k2"])) == {"k1", "k2"}
    project.import_file(path, text_col="body")
    assert example_id("hello there") in project.store.existing_ids([example_id("hello there")])


def test_pool_labels_train_unless_gold(project, tmp_path):
    path = tmp_path / "l.csv"
    pd.DataFrame({"text": ["see you at 6", "free ringtones text WIN"], "label": ["ham", "spam"]}).to_csv(path, index=False)
    res = project.import_file(path, label_col="label")
    assert res.labels_added == 2
    assert sorted(r[2] for r in project.store.training_set()) == ["ham", "spam"]


def test_test_split_needs_labels_and_keeps_them_hidden(project, example_dir):
    with pytest.raises(SynthloopError, match="--label-col"):
        project.import_file(example_dir / "test.csv", split="test")
    project.import_file(example_dir / "test.csv", label_col="label", split="test")
    texts, gold = project.store.test_set()
    assert len(texts) == len(gold) > 400
    assert project.store.training_set() == []


def write(tmp_path, name, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


@pytest.mark.parametrize("name, content, kwargs, message", [
    ("missing.csv", None, {}, "does not exist"),
    ("empty.csv", b"", {}, "is empty"),
    ("header.csv", b"text,label\n", {}, "no rows|is empty"),
    ("latin1.csv", "text\ncaf\xe9 au lait\n".encode("latin-1"), {}, "not UTF-8.*iconv"),
    ("cols.csv", b"body\nhello\n", {}, "no column 'text'.*--text-col"),
    ("cols2.csv", b"text\nhello\n", {"label_col": "label"}, "no column 'label'.*--label-col"),
    ("labels.csv", b"text,label\nhello,ham\nbuy now,eggs\n", {"label_col": "label"}, r"\['eggs'\] are not in the task"),
    ("blank.csv", b"text\nhello\n\"  \"\nok\n", {}, r"empty text \(line 3\)"),
    ("odd.xlsx", b"whatever", {}, "unsupported file type"),
    ("broken.jsonl", b'{"text": "a"}\n{"text": \n', {}, "could not be read as jsonl"),
])
def test_bad_input_is_refused_and_store_untouched(project, example_dir, tmp_path, name, content, kwargs, message):
    project.import_file(example_dir / "pool.csv", label_col="label", gold=True)
    before = snapshot(project)
    path = tmp_path / name if content is None else write(tmp_path, name, content)
    with pytest.raises(SynthloopError, match=message):
        project.import_file(path, **kwargs)
    assert snapshot(project) == before


def test_duplicate_user_ids_with_different_texts(project, tmp_path):
    path = write(tmp_path, "dup.jsonl", b"\n".join(json.dumps(r).encode() for r in [{"id": 1, "text": "a"}, {"id": 1, "text": "b"}]))
    with pytest.raises(SynthloopError, match="used for two different texts"):
        project.import_file(path, id_col="id")
    assert project.store.count_examples() == {}
