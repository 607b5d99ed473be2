"""pool/validation/test given as `datasets` datasets: save_to_disk directories (a Dataset, a DatasetDict) and hub ids
(offline), with the column mapping; the same one-line row errors as files; GSM8K's "#### <answer>" ground truths."""

from __future__ import annotations

import json
import math

import pytest
from datasets import Dataset, DatasetDict

from gradalign.cli import main
from gradalign.config import RunConfig
from gradalign.curriculum.setup import load_problem_sets
from gradalign.data.io import InputColumns, is_dataset_source, load_problems
from gradalign.data.problem import DataError, Problem
from gradalign.rewards.verifiers import ExactMatch, MathVerify, final_answer

GSM8K_ROWS = [
    {"question": "Natalia sold 48 clips in April and half as many in May. How many in all?",
     "answer": "In May she sold 48/2 = <<48/2=24>>24 clips.\nAltogether 48+24 = <<48+24=72>>72 clips.\n#### 72"},
    {"question": "Weng earns $12 an hour. How much for 50 minutes?",
     "answer": "12/60 = $<<12/60=0.2>>0.2 per minute.\n0.2 * 50 = $<<0.2*50=10>>10.\n#### 10"},
]
TEST_ROWS = [{"question": "What is 1000 + 234?", "answer": "1000 + 234 = 1234\n#### 1,234"}]
GSM8K_COLUMNS = dict(prompt_column="question", answer_column="answer")


def save_dict(tmp_path, train=GSM8K_ROWS, test=TEST_ROWS, name="gsm8k_local"):
    """A config-less DatasetDict with train and test splits, saved to disk."""
    path = tmp_path / name
    DatasetDict({"train": Dataset.from_list(train), "test": Dataset.from_list(test)}).save_to_disk(str(path))
    return path


def save_dataset(tmp_path, rows, name="pool_ds"):
    path = tmp_path / name
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def one_line_error(source, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_problems(source, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------------------------- loading


def test_dataset_dict_splits_through_load_problem_sets(tmp_path):
    path = save_dict(tmp_path)
    cfg = RunConfig.of(pool=str(path), dataset_train_split="train", validation=str(path), test=str(path), **GSM8K_COLUMNS)
    sets = load_problem_sets(cfg)
    assert sets.pool == [Problem(f"gsm8k_local-train-{i}", row["question"], row["answer"]) for i, row in
                         enumerate(GSM8K_ROWS)]
    assert sets.validation == sets.pool  # validation_split defaults to "train"
    assert sets.test == [Problem("gsm8k_local-test-0", TEST_ROWS[0]["question"], TEST_ROWS[0]["answer"])]


def test_single_saved_dataset_with_id_source_and_extra_columns(tmp_path):
    rows = [{"uid": "q1", "question": "2+2?", "final": "4", "family": "add", "level": 1},
            {"uid": "q2", "question": "3*3?", "final": "9", "family": "mul", "level": 2}]
    path = save_dataset(tmp_path, rows)
    cfg = RunConfig.of(pool=str(path), dataset_train_split="ignored-for-a-single-dataset", prompt_column="question",
                    answer_column="final", id_column="uid", source_column="family")
    assert load_problem_sets(cfg).pool == [Problem("q1", "2+2?", "4", "add", {"level": 1}),
                                           Problem("q2", "3*3?", "9", "mul", {"level": 2})]


def test_chat_prompts_in_a_dataset(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}]
    path = save_dataset(tmp_path, [{"prompt": chat, "answer": "4"}])
    assert load_problems(path) == [Problem("pool_ds-0", chat, "4")]


def test_defaults_change_nothing_for_files(tmp_path):
    """The default columns keep the TRL aliases and the verl layout of files working."""
    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"prompt": "1+1=", "solution": 2}) + "\n")
    verl = tmp_path / "verl.jsonl"
    verl.write_text(json.dumps({"prompt": [{"role": "user", "content": "3+3?"}], "data_source": "s",
                                "reward_model": {"ground_truth": "6"}, "extra_info": {"index": 5}}) + "\n")
    sets = load_problem_sets(RunConfig.of(pool=str(trl), test=str(verl)))
    assert sets.pool == [Problem("trl-0", "1+1=", "2")]
    assert sets.test == [Problem("5", [{"role": "user", "content": "3+3?"}], "6", "s")]


def test_column_mapping_applies_to_files_in_both_layouts(tmp_path):
    trl = tmp_path / "trl.jsonl"
    trl.write_text(json.dumps({"key": "k1", "question": "1+1=", "final": "2", "kind": "add", "answer": "x"}) + "\n")
    columns = InputColumns(prompt="question", answer="final", id="key", source="kind")
    # an explicit answer column is the one used; an "answer" key beside it is kept as metadata
    assert load_problems(trl, columns=columns) == [Problem("k1", "1+1=", "2", "add", {"answer": "x"})]
    verl = tmp_path / "verl.jsonl"
    verl.write_text(json.dumps({"question": [{"role": "user", "content": "3+3?"}], "key": "k2",
                                "reward_model": {"ground_truth": "6"}}) + "\n")
    assert load_problems(verl, columns=columns) == [Problem("k2", [{"role": "user", "content": "3+3?"}], "6")]


def test_what_counts_as_a_dataset(tmp_path):
    (tmp_path / "pool.csv").write_text("a,b\n")
    assert not is_dataset_source(tmp_path / "pool.csv")  # an existing file: refused as an unknown file type
    assert not is_dataset_source(tmp_path / "missing.jsonl")  # "file not found", not a hub lookup
    assert is_dataset_source(tmp_path) and is_dataset_source("openai/gsm8k")
    assert "unknown file type '.csv'" in one_line_error(tmp_path / "pool.csv")
    assert one_line_error(tmp_path / "missing.jsonl").endswith("missing.jsonl: file not found")


# ------------------------------------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    "row, text",
    [
        ({"question": None, "answer": "2"}, "field 'question' is null"),
        ({"question": "  ", "answer": "2"}, "field 'question' is empty"),
        ({"question": "x", "answer": math.nan}, "field 'answer' is nan (not a finite number)"),
        ({"question": "x", "answer": None}, "field 'answer' is null"),
        ({"question": "x", "answer": [1]}, "field 'answer' must be a string or number (got list)"),
        ({"question": 5, "answer": "2"}, "field 'question' must be a string or a chat list (got int)"),
    ],
)
def test_bad_rows_give_the_file_errors_naming_dataset_and_split(tmp_path, row, text):
    # the bad row alone in its split: a column has one type, which a good row beside it would have to share
    path = save_dict(tmp_path, train=[row])
    message = one_line_error(path, split="train", columns=InputColumns(prompt="question"))
    assert message.startswith(f"{path}[train]: row 0 (0-based): {text}")


def test_same_message_as_the_file_with_the_same_rows(tmp_path):
    rows = [{"prompt": "1+1=", "answer": 2.0}, {"prompt": "2+2=", "answer": math.nan}]  # one column, one type
    file = tmp_path / "pool.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in rows))  # json writes NaN
    saved = save_dataset(tmp_path, rows)
    from_file, from_dataset = one_line_error(file), one_line_error(saved)
    assert from_file == f"{file}: line 2: field 'answer' is nan (not a finite number); no completion can match it"
    assert from_dataset == f"{saved}: row 1 (0-based): field 'answer' is nan (not a finite number); " \
                           f"no completion can match it"


def test_missing_prompt_column_names_the_mapped_column(tmp_path):
    path = save_dict(tmp_path)
    message = one_line_error(path, split="train")  # default prompt column: "prompt", which gsm8k lacks
    assert message == f"{path}[train]: row 0 (0-based): field 'prompt' is missing"


def test_unknown_split_names_the_available_splits(tmp_path):
    path = save_dict(tmp_path)
    with pytest.raises(DataError) as info:
        load_problem_sets(RunConfig.of(pool=str(path), dataset_train_split="validation", **GSM8K_COLUMNS))
    assert str(info.value) == f"{path}[validation]: no split 'validation' (available splits: train, test)"


def test_hub_id_offline_fails_in_one_line(monkeypatch):
    import datasets
    import huggingface_hub.constants

    # datasets reads HF_HUB_OFFLINE at import: set its copies too, so no test ever waits on the network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    message = one_line_error("gradalign-tests/no-such-dataset", split="train", config="main")
    assert message.startswith("gradalign-tests/no-such-dataset[main/train]: the dataset could not be loaded (")
    assert message.endswith("; it is not a local file or directory either")


def test_cli_names_a_missing_hub_dataset_in_one_line(tmp_path, capsys, monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    code = main(["run", "--pool", "gradalign-tests/no-such-dataset", "--dataset_config", "main", "--output-dir",
                 str(out), "--method", "random", "--chunk-size", "1", "--rounds", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists() and len(err) == 1
    assert err[0].startswith("gradalign: error: gradalign-tests/no-such-dataset[main/train]: the dataset could not "
                             "be loaded")


# ----------------------------------------------------------------------------------------- GSM8K answers


def test_final_answer_takes_the_text_after_the_last_marker():
    assert final_answer(GSM8K_ROWS[0]["answer"]) == "72"
    assert final_answer("a #### b #### 1,234 ") == "1,234"
    assert final_answer("42") == "42" and final_answer("nothing after ####") == "nothing after ####"


def test_exact_match_reads_gsm8k_answers():
    exact = ExactMatch()
    assert exact("72\nmore text", GSM8K_ROWS[0]["answer"]) == 1.0
    assert exact("73", GSM8K_ROWS[0]["answer"]) == 0.0


def test_math_verify_reads_gsm8k_answers():
    verifier = MathVerify(timeout_seconds=30.0)
    try:
        gold, big = GSM8K_ROWS[0]["answer"], TEST_ROWS[0]["answer"]
        scores = verifier.batch(
            ["She sold 72 clips in all.", "The answer is \\boxed{72}.", "She sold 24 clips.",
             "The sum is 1234.", "The sum is 1,234.", "The sum is 1,235."],
            [gold, gold, gold, big, big, big])
    finally:
        verifier.close()
    assert scores == [1.0, 1.0, 0.0, 1.0, 1.0, 0.0]
