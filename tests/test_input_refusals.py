"""Bad problem files are refused at load time with one line naming the file, row and field; suspicious ones warn once.

Issue 14, items 3 (mixed text/chat prompts, chat roles), 5 (prompt length), 9 (non-UTF-8 files) and 11 (float answers).
"""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gradalign.cli import main
from gradalign.config import RunConfig
from gradalign.curriculum.setup import check_inputs
from gradalign.data.io import MAX_PROMPT_CHARS, load_problems
from gradalign.data.problem import DataError, Problem
from gradalign.data.regimes import Scenario

CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def refusal(path) -> str:
    with pytest.raises(DataError) as e:
        load_problems(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path))
    return msg


# ------------------------------------------------------------------------------ item 3: one kind of prompt, chat roles


def test_text_and_chat_prompts_in_one_jsonl_file_are_refused(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+2=", "answer": "4"},
                                                 {"prompt": CHAT, "answer": "4"}])
    assert refusal(path) == (f"{path}: line 3: field 'prompt' is a chat (list of messages) but the one at line 1 is "
                             f"text; one file must use one kind of prompt")


def test_chat_then_text_in_a_json_file_names_rows(tmp_path):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([{"prompt": CHAT, "answer": "4"}, {"prompt": "1+1=", "answer": "2"}]))
    msg = refusal(path)
    assert "row 1 (0-based): field 'prompt' is text but the one at row 0 (0-based) is a chat" in msg


@pytest.mark.parametrize("role", ["tool", "User", "bot"])
def test_unknown_chat_role_is_refused(tmp_path, role):
    chat = [{"role": "user", "content": "2+2?"}, {"role": role, "content": "4"}]
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": CHAT, "answer": "4"}, {"prompt": chat, "answer": "4"}])
    assert refusal(path) == (f"{path}: line 2: field 'prompt[1].role' is {role!r} "
                             f"(expected one of: system, user, assistant)")


def test_unknown_chat_role_in_verl_parquet(tmp_path):
    path = tmp_path / "pool.parquet"
    rows = [{"prompt": [{"role": "user", "content": "1+1?"}], "reward_model": {"ground_truth": "2"}},
            {"prompt": [{"role": "tool", "content": "2+2?"}], "reward_model": {"ground_truth": "4"}}]
    pq.write_table(pa.Table.from_pylist(rows), path)
    assert "pool.parquet: row 1 (0-based): field 'prompt[0].role' is 'tool'" in refusal(path)


# ------------------------------------------------------------------------------------------- item 5: prompt length


def test_prompt_over_the_hard_cap_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "1+1=", "answer": "2"},
                                                 {"prompt": "1" * (MAX_PROMPT_CHARS + 1), "answer": "2"}])
    assert refusal(path) == (f"{path}: line 2: field 'prompt' is 100,001 characters long; the limit is 100,000 "
                             f"(MAX_PROMPT_CHARS in gradalign.data.io)")


def test_chat_prompt_over_the_cap_in_total_is_refused_in_parquet(tmp_path):
    half = MAX_PROMPT_CHARS // 2 + 1
    chat = [{"role": "system", "content": "a" * half}, {"role": "user", "content": "b" * half}]
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": chat, "answer": "4"}]), path)
    assert "pool.parquet: row 0 (0-based): field 'prompt' is 100,002 characters long" in refusal(path)


def test_prompt_at_the_cap_is_accepted(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "1" * MAX_PROMPT_CHARS, "answer": "2"}])
    assert len(load_problems(path)[0].prompt) == MAX_PROMPT_CHARS


def tiny_inputs(tmp_path, pool_prompts):
    pool = [Problem(f"pool-{i}", prompt, "2") for i, prompt in enumerate(pool_prompts)]
    cfg = RunConfig.of(pool=str(tmp_path / "pool.jsonl"), method="random", chunk_size=1, model_name_or_path="tiny")
    return cfg, Scenario("custom", pool, [], [])


def test_tiny_policy_warns_once_about_long_prompts_and_foreign_characters(tmp_path, caplog):
    chat = [{"role": "user", "content": "x" * 40}, {"role": "assistant", "content": "y" * 40}]
    cfg, sets = tiny_inputs(tmp_path, ["1+1=", "1" * 100, "2" * 1002, chat, "Wie viel ist 1+1?", "1+é="])
    with caplog.at_level(logging.WARNING, logger="gradalign"):
        check_inputs(cfg, sets)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        f"{cfg.pool}: 3 prompts are longer than the tiny policy's 64-token context (one token per character plus "
        f"BOS; longest 1002 characters)",
        f"{cfg.pool}: 2 prompts contain characters outside the tiny policy's alphabet, read as <unk> "
        f"(first: 'W' in problem 'pool-4')",
    ]


def test_tiny_policy_is_silent_on_prompts_it_reads(tmp_path, caplog):
    cfg, sets = tiny_inputs(tmp_path, ["1+1=", "(3*4)-5=", "9" * 63])
    with caplog.at_level(logging.WARNING, logger="gradalign"):
        check_inputs(cfg, sets)
        check_inputs(RunConfig.of(pool=cfg.pool, method="random", chunk_size=1, model_name_or_path="some/other-model"),
                     tiny_inputs(tmp_path, ["Ü" * 500])[1])  # other models: only the load-time cap applies
    assert caplog.records == []


# ------------------------------------------------------------------------------------------ item 9: not UTF-8


def test_non_utf8_jsonl_names_line_and_column(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(b'{"prompt": "1+1=", "answer": "2"}\r\n{"prompt": "caf\xe9", "answer": "2"}\n')
    assert refusal(path) == f"{path}: line 2: not valid UTF-8 (byte 0xe9 at column 16); save the file as UTF-8"


def test_non_utf8_far_into_a_jsonl_file(tmp_path):
    # past the text decoder's first chunk, so the codec's own offsets would be wrong
    good = "".join(json.dumps({"prompt": f"{i}+1=", "answer": str(i + 1)}) + "\n" for i in range(3000))
    path = tmp_path / "pool.jsonl"
    path.write_bytes(good.encode() + b'{"prompt": "\xff", "answer": "1"}\n')
    assert "pool.jsonl: line 3001: not valid UTF-8 (byte 0xff at column 13)" in refusal(path)


def test_non_utf8_json_file(tmp_path):
    path = tmp_path / "pool.json"
    path.write_bytes(b'[\n  {"prompt": "1+1=",\n   "answer": "\x80"}]')
    assert refusal(path) == f"{path}: line 3: not valid UTF-8 (byte 0x80 at column 15); save the file as UTF-8"


# ------------------------------------------------------------------------------------------ item 11: float answers


@pytest.mark.parametrize("value, shown", [(float("nan"), "nan"), (float("inf"), "inf"), (float("-inf"), "-inf")])
def test_non_finite_answers_are_refused(tmp_path, value, shown):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": "1+1=", "answer": 2}, {"prompt": "x", "solution": value}])
    assert refusal(path) == (f"{path}: line 2: field 'solution' is {shown} (not a finite number); "
                             f"no completion can match it")


def test_nan_answer_in_parquet_is_refused(tmp_path):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"prompt": ["1+1=", "0/0="], "answer": [2.0, float("nan")]}), path)
    assert refusal(path) == f"{path}: row 1 (0-based): field 'answer' is nan (not a finite number); " \
                            f"no completion can match it"


def test_nan_ground_truth_in_verl_jsonl_is_refused(tmp_path):
    path = write_jsonl(tmp_path / "pool.jsonl", [{"prompt": CHAT, "reward_model": {"ground_truth": float("nan")}}])
    assert "line 1: field 'reward_model.ground_truth' is nan" in refusal(path)


def test_whole_float_answers_become_integers_with_one_warning(tmp_path, caplog):
    rows = [{"prompt": "a", "answer": 70.0}, {"prompt": "b", "answer": 70}, {"prompt": "c", "answer": -3.0},
            {"prompt": "d", "answer": "5.0"}, {"prompt": "e", "answer": 0.5}, {"prompt": "f", "answer": 1e300}]
    path = write_jsonl(tmp_path / "pool.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="gradalign"):
        problems = load_problems(path)
    assert [p.answer for p in problems] == ["70", "70", "-3", "5.0", "0.5", "1e+300"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 2 answers were numbers with a fractional part .0 and were written as integers (first at line 1)",
        f"{path}: 2 answers were non-integral numbers and were kept as Python writes them (first at line 5); "
        f"exact-match verifiers compare that text: write such answers as strings",
    ]


def test_whole_float_answers_in_parquet(tmp_path, caplog):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"prompt": ["1+1=", "2+2="], "answer": [2.0, 4.0]}), path)
    with caplog.at_level(logging.WARNING, logger="gradalign"):
        assert [p.answer for p in load_problems(path)] == ["2", "4"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: 2 answers were numbers with a fractional part .0 and were written as integers "
        f"(first at row 0 (0-based))"]


# ---------------------------------------------------------------------------------------------- the command line


def test_cli_refuses_a_bad_pool_with_one_line_and_writes_nothing(tmp_path, capsys):
    pool = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "1+1=", "answer": "2"}, {"prompt": CHAT, "answer": "4"}])
    out = tmp_path / "run"
    assert main(["run", "--pool", str(pool), "--output-dir", str(out), "--method", "random", "--chunk-size", "1",
                 "--rounds", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"gradalign: error: {pool}: line 2: field 'prompt' is a chat (list of messages) but the one at "
                   f"line 1 is text; one file must use one kind of prompt"]
    assert not out.exists()


def test_countdown_problems_the_verifier_cannot_read_are_refused_before_the_run(tmp_path, capsys):
    """--verifier countdown needs numbers and target (or a gold expression) for every problem: refused at the start
    with the file and the problem, not mid-run."""
    from gradalign.cli import main
    rows = [{"id": "ok", "prompt": "3 4 2 -> 14", "answer": "2+3*4"},
            {"id": "bad", "prompt": "make 24", "answer": "twenty-four"}]
    pool = tmp_path / "pool.jsonl"
    pool.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "run"
    code = main(["run", "--pool", str(pool), "--validation", str(pool), "--verifier", "countdown", "--method", "random",
                 "--chunk-size", "2", "--output-dir", str(out)])
    assert code == 2 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pool.jsonl: problem 'bad': countdown problem has no metadata" in err[0]


def test_prompts_that_do_not_fit_a_models_context_get_one_warning_with_a_count(tmp_path, caplog):
    """Any model: once loaded, prompts whose tokens plus max_new_tokens exceed its context are counted in one line."""
    from gradalign.config import RunConfig
    from gradalign.curriculum.setup import warn_long_prompts
    from gradalign.data.problem import Problem
    from gradalign.data.regimes import Scenario
    from gradalign.policy.warmstart import warm_started_tiny
    model, tokenizer = warm_started_tiny()
    assert model.config.max_position_embeddings == 64
    pool = [Problem(f"p{i}", "1+" * n + "1=", "x") for i, n in enumerate((3, 30, 40))]  # 8, 62 and 82 characters
    cfg = RunConfig.of(model_name_or_path=str(tmp_path / "some-model"), pool=str(tmp_path / "pool.jsonl"),
                       max_completion_length=6)
    with caplog.at_level(logging.WARNING, logger="gradalign.curriculum.loop"):
        warn_long_prompts(cfg, Scenario("custom", pool, [], []), model, tokenizer)
    lines = [r.getMessage() for r in caplog.records]
    # + BOS: 9, 63 and 83 tokens; with 6 new tokens the last two exceed 64
    assert lines == [f"{tmp_path / 'pool.jsonl'}: 2 prompts do not fit the model's 64-token context with "
                     f"max_completion_length 6 (longest 83 tokens); generation will see them truncated or fail"]
