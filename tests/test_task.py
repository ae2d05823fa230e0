import pytest

from synthloop import SynthloopError, load_task
from synthloop.task import parse_task

LABELS = [{"name": "a", "description": "A"}, {"name": "b", "description": "B", "examples": ["x"]}]


def task(**overrides):
    data = {"name": "t", "description": "d", "labels": LABELS}
    data.update(overrides)
    return {"task": data}


def test_example_task_loads(example_dir):
    spec = load_task(example_dir / "task.toml")
    assert spec.name == "sms-spam"
    assert spec.label_names == ["ham", "spam"]
    assert len(spec.examples()) == 4
    assert "spam:" in spec.render()


def test_shared_tasks_load(shared_data):
    for path in shared_data.glob("*/task.toml"):
        assert len(load_task(path).label_names) >= 2


@pytest.mark.parametrize("overrides, message", [
    ({"labels": LABELS + [{"name": "a"}]}, "duplicate label 'a'"),
    ({"labels": LABELS[:1]}, "two or more labels"),
    ({"labels": [{"name": "  "}, {"name": "b"}]}, "label name is empty"),
    ({"colour": "red"}, "unknown key 'colour'"),
    ({"labels": [{"name": "a", "desc": "typo"}, {"name": "b"}]}, "unknown key 'desc'"),
    ({"name": "Not A Slug"}, "task.name"),
])
def test_invalid_tasks_name_the_problem(overrides, message):
    with pytest.raises(SynthloopError, match=message):
        parse_task(task(**overrides), "task.toml")


def test_missing_table_and_file(tmp_path):
    with pytest.raises(SynthloopError, match=r"no \[task\] table"):
        parse_task({"labels": []}, "x.toml")
    with pytest.raises(SynthloopError, match="does not exist"):
        load_task(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[task\nname=", encoding="utf-8")
    with pytest.raises(SynthloopError, match="not valid UTF-8 TOML"):
        load_task(bad)
