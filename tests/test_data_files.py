"""Local prompt files: every format, and each bad input with its message."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from refusal_lens.data import DataError, Prompt, load_prompt_file
from refusal_lens.data.splits import assign_split


def test_txt_skips_blank_lines_and_numbers_ids(tmp_path):
    f = tmp_path / "mine.txt"
    f.write_text("How do I bake bread?\n\n   \nWrite a poem.\n", encoding="utf-8")
    prompts = load_prompt_file(f)
    assert [p.text for p in prompts] == ["How do I bake bread?", "Write a poem."]
    assert [p.id for p in prompts] == ["mine:0", "mine:1"]
    assert all(isinstance(p, Prompt) and p.source == "mine" for p in prompts)
    assert prompts[0].split == assign_split("mine:0")


def test_json_list_of_strings(tmp_path):
    f = tmp_path / "s.json"
    f.write_text(json.dumps(["a b", "c d"]))
    assert [p.text for p in load_prompt_file(f)] == ["a b", "c d"]


def test_json_objects_instruction_or_prompt_and_category(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps([{"prompt": "x", "category": "cyber"}, {"prompt": "y"}]))
    prompts = load_prompt_file(f)
    assert [p.text for p in prompts] == ["x", "y"]
    assert [p.category for p in prompts] == ["cyber", None]


def test_json_named_column(tmp_path):
    f = tmp_path / "o.json"
    f.write_text(json.dumps([{"Goal": "g1", "prompt": "no"}]))
    assert load_prompt_file(f, column="Goal")[0].text == "g1"


def test_jsonl(tmp_path):
    f = tmp_path / "l.jsonl"
    f.write_text('{"instruction": "one"}\n\n"two"\n')
    assert [p.text for p in load_prompt_file(f)] == ["one", "two"]


def test_csv_default_and_named_columns(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("goal,target,category\n\"Do x, then y\",Sure,crime\nDo z,Sure,\n")
    prompts = load_prompt_file(f)
    assert [p.text for p in prompts] == ["Do x, then y", "Do z"]
    assert [p.category for p in prompts] == ["crime", None]
    assert load_prompt_file(f, column="target")[0].text == "Sure"


def test_parquet(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"instruction": ["p1", "p2"], "category": ["a", "b"]}), f)
    prompts = load_prompt_file(f)
    assert [(p.text, p.category) for p in prompts] == [("p1", "a"), ("p2", "b")]


def test_id_column(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"id": "q7", "prompt": "x"}\n')
    assert load_prompt_file(f, id_column="id")[0].id == "t:q7"


# --- bad input: one test each, asserting the message -------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"not found: .*nope\.txt"):
        load_prompt_file(tmp_path / "nope.txt")


def test_unknown_extension_lists_supported(tmp_path):
    f = tmp_path / "p.xlsx"
    f.write_text("x")
    with pytest.raises(DataError, match=r"'\.xlsx'.*supported: \.txt, \.json, \.jsonl, \.csv, \.parquet"):
        load_prompt_file(f)


def test_empty_txt(tmp_path):
    f = tmp_path / "e.txt"
    f.write_text("\n  \n")
    with pytest.raises(DataError, match="holds no prompts"):
        load_prompt_file(f)


def test_empty_json_list(tmp_path):
    f = tmp_path / "e.json"
    f.write_text("[]")
    with pytest.raises(DataError, match="holds no prompts"):
        load_prompt_file(f)


def test_csv_header_only(tmp_path):
    f = tmp_path / "e.csv"
    f.write_text("prompt\n")
    with pytest.raises(DataError, match="header but no rows"):
        load_prompt_file(f)


def test_malformed_json_names_line(tmp_path):
    f = tmp_path / "bad.json"
    f.write_text('[\n"ok",\n"missing comma"\n"x"\n]')
    with pytest.raises(DataError, match=r"not valid JSON: .* line 4"):
        load_prompt_file(f)


def test_malformed_jsonl_names_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(DataError, match=r"line 2 is not valid JSON"):
        load_prompt_file(f)


def test_json_not_a_list(tmp_path):
    f = tmp_path / "d.json"
    f.write_text(json.dumps({"prompts": ["a"]}))
    with pytest.raises(DataError, match=r"JSON dict; expected a list.*under the key 'prompts'"):
        load_prompt_file(f)


def test_missing_named_column_lists_columns(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("goal,target\nx,y\n")
    with pytest.raises(DataError, match=r"no column 'Behavior'; its columns are: 'goal', 'target'"):
        load_prompt_file(f, column="Behavior")


def test_column_case_hint(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("Goal,target\nx,y\n")
    with pytest.raises(DataError, match=r"did you mean 'Goal'"):
        load_prompt_file(f, column="GOAL ")


def test_no_default_column_lists_columns(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"query": ["a"], "answer": ["b"]}), f)
    with pytest.raises(DataError, match=r"none of the default text columns.*'query', 'answer'"):
        load_prompt_file(f)


def test_row_without_text(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "a"}\n{"prompt": ""}\n')
    with pytest.raises(DataError, match=r"row 2 has no text field 'prompt'"):
        load_prompt_file(f)


def test_row_missing_field(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps([{"prompt": "a"}, {"other": "b"}]))
    with pytest.raises(DataError, match=r"row 2 has no text"):
        load_prompt_file(f)


def test_row_of_wrong_type(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(["a", 3]))
    with pytest.raises(DataError, match=r"row 2 is a int"):
        load_prompt_file(f)


def test_column_on_plain_strings(tmp_path):
    f = tmp_path / "t.json"
    f.write_text(json.dumps(["a"]))
    with pytest.raises(DataError, match=r"plain strings.*no column 'goal'"):
        load_prompt_file(f, column="goal")


def test_column_on_txt(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("a\n")
    with pytest.raises(DataError, match=r"text file .* has no columns"):
        load_prompt_file(f, column="goal")


def test_duplicate_ids(tmp_path):
    f = tmp_path / "t.jsonl"
    f.write_text('{"id": 1, "prompt": "a"}\n{"id": 1, "prompt": "b"}\n')
    with pytest.raises(DataError, match=r"id 't:1' occurs more than once"):
        load_prompt_file(f, id_column="id")


def test_dataerror_is_valueerror():
    assert issubclass(DataError, ValueError)


@pytest.mark.parametrize("suffix", [".json", ".jsonl", ".txt", ".csv"])
def test_a_file_that_is_not_text_names_itself_and_what_was_expected(tmp_path, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(bytes([0xC1, 0xFF, 0x00, 0x9E]) * 64)
    with pytest.raises(DataError, match=rf"{path.name} is not UTF-8 text.*\.txt one prompt a line"):
        load_prompt_file(path)
