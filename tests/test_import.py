import json

import pandas as pd
import pytest
from forkserver import run_synthloop

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


def binary_parquet() -> bytes:
    """A Parquet file whose text column holds bytes, not strings (used to be reported as "empty text")."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"text": [b"abc", b"\xff\xfe"]}), out)
    return out.getvalue()


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
    ("labels.csv", b"text,label\nhello,ham\nbuy now,eggs\n", {"label_col": "label"}, r"line 3: label 'eggs' is not in the task"),
    ("blank.csv", b"text\nhello\n\"  \"\nok\n", {}, r"line 3: the text is empty or only spaces.*--skip-invalid"),
    ("nul.csv", b"text\nhello\n\x00\x00 \nok\n", {}, r"line 3: the text holds only NUL bytes"),
    ("numbers.jsonl", b'{"text": "fine"}\n{"text": 5}\n{"text": ["a"]}\n', {},
     r"line 2: the text is a number \(5\).*--text-col.*line 3: the text is a list"),
    ("conflict.csv", b"text,label\nwin cash,spam\nhello,ham\nwin cash,ham\n", {"label_col": "label"},
     r"1 text\(s\) appear with two different labels \(line 2, line 4\)"),
    ("odd.xlsx", b"whatever", {}, "unsupported file type"),
    ("ragged.csv", b"text,label\nhello,ham\nwin,spam,extra,more\n", {"label_col": "label"},
     r"could not be read as csv.*Expected 2 fields in line 3, saw 4"),
    ("binary.parquet", binary_parquet(), {}, r"row 1: the text is binary data, not a string; row 2: the text is binary"),
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


def test_a_byte_order_mark_is_no_error(project, tmp_path):
    bom = b"\xef\xbb\xbf"
    csv_result = project.import_file(write(tmp_path, "bom.csv", bom + b"text\nhello there\n"))
    jsonl_result = project.import_file(write(tmp_path, "bom.jsonl", bom + b'{"text": "good morning"}\n'))
    assert csv_result.added == 1 and jsonl_result.added == 1


def test_skip_invalid_imports_the_rest_and_lists_every_skipped_row(tmp_path, small_pool):
    import csv
    import json
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "synthloop", "init", "p", "--task", small_pool / "task.toml"], cwd=tmp_path,
                   check=True, capture_output=True)
    bad = write(tmp_path, "bad.csv", b"text,label\nhello there,ham\n\"  \",ham\nbuy,eggs\nwin cash,spam\n"
                                     b"win cash,ham\nsee you,ham\n")

    def run(*args):
        return run_synthloop(*args, cwd=tmp_path / "p")

    refused = run("import", bad, "--label-col", "label")
    assert refused.returncode == 2 and "--skip-invalid" in refused.stderr
    done = run("import", bad, "--label-col", "label", "--skip-invalid", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["added"] == 2 and data["labels_added"] == 2  # "hello there" and "see you"
    expected = [["line 3", "the text is empty or only spaces"],
                ["line 4", "label 'eggs' is not in the task (task labels: ['ham', 'spam'])"],
                ["line 5", "the same text has another label elsewhere in the file"],
                ["line 6", "the same text has another label elsewhere in the file"]]
    assert [list(row) for row in data["skipped"]] == expected
    with open(data["skipped_file"], newline="") as f:
        assert list(csv.reader(f)) == [["where", "reason"], *expected]
    table = run("import", bad, "--label-col", "label", "--skip-invalid")
    assert "skipped 4 invalid row(s)" in table.stderr and "line 5: the same text has another label" in table.stderr


def test_first_label_wins_keeps_the_first_row_of_a_conflicting_text(project, tmp_path):
    path = write(tmp_path, "conflict.csv", b"text,label\nwin cash,spam\nhello,ham\nwin cash,ham\n")
    result = project.import_file(path, label_col="label", first_label_wins=True)
    assert result.added == 2 and result.duplicates_in_file == 1
    assert {r[1]: r[2] for r in project.store.training_set()}["win cash"] == "spam"


def test_test_texts_already_in_the_pool_are_reported(tmp_path, small_pool):
    import subprocess
    import sys

    subprocess.run([sys.executable, "-m", "synthloop", "init", "p", "--task", small_pool / "task.toml"], cwd=tmp_path,
                   check=True, capture_output=True)
    write(tmp_path, "pool.csv", b"text\nwin cash now\nhello mum\n")
    write(tmp_path, "test.csv", b"text,label\nwin cash now,spam\nsee you at 5,ham\n")
    run = lambda *a: subprocess.run([sys.executable, "-m", "synthloop", *map(str, a)], cwd=tmp_path / "p",  # noqa: E731
                                    capture_output=True, text=True)
    assert run("import", tmp_path / "pool.csv").returncode == 0
    out = run("import", tmp_path / "test.csv", "--label-col", "label", "--split", "test").stdout
    assert "1 of these texts are already in the pool: the stored copy wins" in " ".join(out.split())
