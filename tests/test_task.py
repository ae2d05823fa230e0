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
    ({"labels": [{"name": "Abstain"}, {"name": "b"}]}, "the LLM labeler's answer for a text that fits no label"),
    ({"description": "  \n "}, "the task description is blank"),
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


def test_a_byte_order_mark_is_read_and_a_huge_file_is_refused(tmp_path, example_dir):
    bom = tmp_path / "bom.toml"
    bom.write_bytes(b"\xef\xbb\xbf" + (example_dir / "task.toml").read_bytes())
    assert load_task(bom).name == "sms-spam"
    huge = tmp_path / "huge.toml"
    huge.write_bytes((example_dir / "task.toml").read_bytes() + b"#" * 2_000_000)
    with pytest.raises(SynthloopError, match="a task or config file is a few kilobytes"):
        load_task(huge)


def test_config_errors_say_config_not_task(tmp_path, example_dir):
    from synthloop import Project

    Project.init(tmp_path / "p", example_dir / "task.toml").close()
    config = tmp_path / "p" / "synthloop.toml"
    config.write_text(config.read_text().replace("batch_size = 25", "batch_size = 0"))
    with pytest.raises(SynthloopError, match="is not a valid config") as err:
        Project(tmp_path / "p")
    assert "valid task" not in str(err.value)
