"""Loading and saving problem files: both layouts, three formats, round trips, one-line errors."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradalign.data.io import (
    ANSWER_COLUMN,
    ID_COLUMN,
    METADATA_COLUMN,
    PROMPT_COLUMN,
    SOURCE_COLUMN,
    load_problems,
    problems_to_rows,
    save_problems,
)
from gradalign.data.problem import DataError, Problem

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]

TRL_ROWS = [
    {"id": "a", "prompt": "1+1=", "answer": "2", "source": "arith", "difficulty": 3},
    {"prompt": "2+2?", "solution": 4},  # alias + number answer, no id, no source (one file: one kind of prompt)
    {"prompt": "x?", "ground_truth": "\\frac{1}{2}", "metadata": {"corrupted": True}},
]
VERL_ROWS = [
    {
        "prompt": CHAT,
        "data_source": "gsm8k",
        "ability": "math",
        "reward_model": {"style": "rule", "ground_truth": "4"},
        "extra_info": {"index": 7, "split": "train"},
    },
    {"prompt": [{"role": "user", "content": "3+3?"}], "reward_model": {"ground_truth": "6"}},
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def check_trl(problems, stem):
    assert [p.id for p in problems] == ["a", f"{stem}-1", f"{stem}-2"]
    assert problems[0] == Problem("a", "1+1=", "2", "arith", {"difficulty": 3})
    assert problems[1].prompt == "2+2?" and problems[1].answer == "4" and problems[1].source == "unknown"
    assert problems[2].answer == "\\frac{1}{2}" and problems[2].corrupted


def check_verl(problems, stem):
    assert problems[0] == Problem("7", CHAT, "4", "gsm8k", {"ability": "math", "split": "train"})
    assert problems[1] == Problem(f"{stem}-1", [{"role": "user", "content": "3+3?"}], "6", "unknown", {})


# -------------------------------------------------------------------------------------------- loading


def test_load_trl_jsonl_with_blank_lines(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("\n" + "\n\n".join(json.dumps(r) for r in TRL_ROWS) + "\n\n")
    check_trl(load_problems(path), "pool")


def test_load_trl_json_and_id_prefix(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps(TRL_ROWS))
    check_trl(load_problems(path), "pool")
    assert load_problems(path, id_prefix="gsm")[1].id == "gsm-1"


def test_load_verl_jsonl_and_parquet(tmp_path):
    check_verl(load_problems(write_jsonl(tmp_path / "v.jsonl", VERL_ROWS)), "v")
    pq.write_table(pa.Table.from_pylist(VERL_ROWS), tmp_path / "v.parquet")
    problems = load_problems(tmp_path / "v.parquet")
    # Parquet fills missing struct fields with None; those are kept as metadata only where present.
    assert problems[0].id == "7" and problems[0].prompt == CHAT and problems[0].answer == "4"
    assert problems[1].id == "v-1" and problems[1].answer == "6"


def test_load_trl_parquet(tmp_path):
    rows = [{"id": "a", "prompt": "1+1=", "answer": "2"}, {"id": "b", "prompt": "2+2=", "answer": "4"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    assert load_problems(tmp_path / "t.parquet") == [Problem("a", "1+1=", "2"), Problem("b", "2+2=", "4")]


def test_mixed_layouts_in_one_file(tmp_path):
    path = write_jsonl(tmp_path / "mix.jsonl", [{**TRL_ROWS[0], "prompt": CHAT}, VERL_ROWS[0]])
    assert [p.id for p in load_problems(path)] == ["a", "7"]


# -------------------------------------------------------------------------------------------- saving

PROBLEMS = [
    Problem("p0", "What is 1+1?", "2", "arith", {"corrupted": True, "corruption": "coin"}),
    Problem("p1", "Half?", "\\frac{1}{2}", "frac", {"wrong_answer": "3", "level": 2, "tags": ["x"]}),
    Problem("p2", "Plain", "7"),
]
CHAT_PROBLEMS = [Problem("c0", CHAT, "4", "gsm8k", {"corrupted": False}), Problem("c1", CHAT[1:], "5")]


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
@pytest.mark.parametrize("problems", [PROBLEMS, CHAT_PROBLEMS], ids=["text", "chat"])
def test_round_trip_trl(tmp_path, suffix, problems):
    path = tmp_path / f"out{suffix}"
    save_problems(path, problems, style="trl")
    assert load_problems(path) == problems
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_verl(tmp_path, suffix):
    path = tmp_path / f"out{suffix}"
    save_problems(path, PROBLEMS + CHAT_PROBLEMS, style="verl")
    loaded = load_problems(path)
    # verl prompts are always chats: text prompts come back as one user message.
    expected = [
        Problem(p.id, [{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str) else p.prompt,
                p.answer, p.source, p.metadata)
        for p in PROBLEMS + CHAT_PROBLEMS
    ]
    assert loaded == expected


def test_verl_jsonl_layout(tmp_path):
    path = tmp_path / "v.jsonl"
    save_problems(path, PROBLEMS[:1], style="verl")
    row = json.loads(path.read_text())
    assert row == {
        "prompt": [{"role": "user", "content": "What is 1+1?"}],
        "data_source": "arith",
        "reward_model": {"ground_truth": "2"},
        "extra_info": {"index": "p0", "corrupted": True, "corruption": "coin"},
    }


def test_save_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="style"):
        save_problems(tmp_path / "x.jsonl", PROBLEMS, style="other")
    with pytest.raises(ValueError, match=".csv"):
        save_problems(tmp_path / "x.csv", PROBLEMS)
    with pytest.raises(ValueError, match="all prompts"):
        save_problems(tmp_path / "x.parquet", PROBLEMS + CHAT_PROBLEMS, style="trl")
    assert not list(tmp_path.iterdir())


def test_problems_to_rows():
    rows = problems_to_rows(PROBLEMS[:2])
    assert set(rows[0]) == {PROMPT_COLUMN, ANSWER_COLUMN, ID_COLUMN, SOURCE_COLUMN, METADATA_COLUMN}
    assert rows[1][ID_COLUMN] == "p1" and rows[1][ANSWER_COLUMN] == "\\frac{1}{2}"
    assert json.loads(rows[1][METADATA_COLUMN]) == PROBLEMS[1].metadata


# -------------------------------------------------------------------------------------------- errors

GOOD = {"id": "ok", "prompt": "1+1=", "answer": "2"}

# (rows of pool.jsonl, row label, field name the message must contain, other expected text)
ROW_ERRORS = [
    ([GOOD, "not json"], "line 2", None, "malformed JSON (Expecting value)"),
    ([GOOD, [1, 2]], "line 2", None, "not a JSON object"),
    ([{"answer": "2"}], "line 1", "prompt", "missing"),
    ([{"prompt": "  ", "answer": "2"}], "line 1", "prompt", "empty"),
    ([{"prompt": [], "answer": "2"}], "line 1", "prompt", "empty"),
    ([{"prompt": 5, "answer": "2"}], "line 1", "prompt", "must be a string or a chat list"),
    ([{"prompt": [{"role": "user"}], "answer": "2"}], "line 1", "prompt[0]", "role"),
    ([{"prompt": ["hi"], "answer": "2"}], "line 1", "prompt[0]", "message"),
    ([GOOD, GOOD | {"id": "b"}, {"prompt": "x"}], "line 3", "answer", "(or 'reward_model.ground_truth') is missing"),
    ([{"prompt": "x", "answer": None}], "line 1", "answer", "null"),
    ([{"prompt": "x", "answer": ""}], "line 1", "answer", "empty"),
    ([{"prompt": "x", "solution": [1]}], "line 1", "solution", "string or number"),
    ([{"prompt": CHAT, "reward_model": {"style": "rule"}}], "line 1", "reward_model.ground_truth", "missing"),
    ([{"prompt": CHAT, "reward_model": {"ground_truth": None}}], "line 1", "reward_model.ground_truth", "null"),
    ([{"prompt": "x", "answer": "1", "metadata": [1]}], "line 1", "metadata", "object"),
    ([{"prompt": "x", "answer": "1", "source": 3}], "line 1", "source", "string"),
    ([GOOD, {"id": "ok", "prompt": "y", "answer": "3"}], "line 2", "id", "from line 1"),
]


@pytest.mark.parametrize("rows, where, field, text", ROW_ERRORS)
def test_row_errors_name_file_row_and_field(tmp_path, rows, where, field, text):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    with pytest.raises(DataError) as info:
        load_problems(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {where}: ")
    assert "pool.jsonl" in message and text in message
    if field is not None:
        assert f"'{field}'" in message


def test_malformed_json_message_format(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [GOOD | {"id": str(i)} for i in range(6)])
    with path.open("a") as f:
        f.write('{"prompt": "x" "answer": "1"}\n')
    with pytest.raises(DataError, match=r"pool\.jsonl: line 7: malformed JSON \(Expecting ',' delimiter\)$"):
        load_problems(path)


def test_parquet_row_errors_use_0_based_rows(tmp_path):
    rows = [GOOD, {"id": "b", "prompt": "y", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "pool.parquet")
    with pytest.raises(DataError) as info:
        load_problems(tmp_path / "pool.parquet")
    assert str(info.value).endswith("pool.parquet: row 1 (0-based): field 'answer' is null")


@pytest.mark.parametrize(
    "name, content, text",
    [
        ("pool.jsonl", None, "file not found"),
        ("pool.csv", "a,b\n", "unknown file type '.csv'"),
        ("pool.jsonl", "\n\n", "pool.jsonl: no problems"),
        ("pool.json", "[]", "pool.json: no problems"),
        ("pool.json", '{"prompt": "x"}', "expected a JSON list"),
        ("pool.json", "[{]", "malformed JSON"),
        ("pool.parquet", "not parquet at all", "unreadable parquet file"),
    ],
)
def test_file_errors(tmp_path, name, content, text):
    path = tmp_path / name
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError) as info:
        load_problems(path)
    assert name in str(info.value) and text in str(info.value) and "\n" not in str(info.value)
