"""Load and save problem files (JSONL, JSON, Parquet) in the TRL or the verl layout; load `datasets` datasets.

`load_problems` also reads a `datasets` dataset (a hub id, or a directory made by ``save_to_disk``; see
`gradalign.data.external.load_dataset_rows`): its rows go through the very same row-by-row checks as a file's.

Two row layouts are recognised, row by row (column names as `InputColumns` maps them; the defaults below):

* TRL style: ``prompt``, ``answer`` (aliases ``solution``, ``ground_truth``, only while the answer column is
  the default), optional ``id`` and ``source``; any other key is kept in ``metadata``.
* verl style (any row with a ``reward_model`` key): ``prompt`` (chat), ``reward_model.ground_truth``,
  optional ``data_source`` and ``extra_info.index`` (else the id column); the rest of ``extra_info`` and any
  other key go into ``metadata``. Only the prompt and id columns are mapped here: verl fixes the other names.

A ``metadata`` object (JSONL/JSON) or ``metadata_json`` string (Parquet) in a row is merged into the
metadata, so the files `save_problems` writes load back to equal problems.

Every bad input raises `DataError` with one line naming the file (or ``dataset[config/split]``), the row and
the field: users fix their data from that line alone. Among them: a file must be UTF-8; its prompts must be
all text or all chats (a batch is tokenized one way), chat roles one of `CHAT_ROLES`, and no prompt longer
than `MAX_PROMPT_CHARS`; NaN/inf answers. Float answers load with one warning line per file: whole numbers
become integers ("70.0" -> "70"), others are kept as ``str(value)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from gradalign.data.problem import DataError, Problem, Prompt, one_line
from gradalign.fileio import atomic_path

# Columns of the rows handed to TRL (`problems_to_rows`). Metadata travels as a JSON string so that
# datasets/arrow never has to infer one schema for arbitrary, per-problem dicts.
PROMPT_COLUMN = "prompt"
ANSWER_COLUMN = "answer"
ID_COLUMN = "problem_id"
SOURCE_COLUMN = "source"
METADATA_COLUMN = "metadata_json"

_ANSWER_KEYS = ("answer", "solution", "ground_truth")  # TRL-style aliases, first present wins
_SUFFIXES = (".jsonl", ".json", ".parquet")

# A prompt (text, or the total content of a chat) longer than this is refused: tokenizers abort the whole process
# on pathological inputs (a 50 MB prompt: rc 134), and no policy has a context anywhere near it.
MAX_PROMPT_CHARS = 100_000
CHAT_ROLES = ("system", "user", "assistant")
_EXACT_FLOAT_INT = 2**53  # floats below this that are whole numbers are exactly that integer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputColumns:
    """Which keys of an input row hold a problem's fields (RunConfig's ``*_column`` settings).

    Reading only: the rows handed to TRL use the fixed ``*_COLUMN`` names above.
    """

    prompt: str = "prompt"
    answer: str = "answer"
    id: str = "id"
    source: str = "source"

    def answer_keys(self) -> tuple[str, ...]:
        """Keys tried for a TRL-style answer, first present wins: the aliases only for the default column, since
        a column the user named is the one they mean."""
        return _ANSWER_KEYS if self.answer == "answer" else (self.answer,)


DEFAULT_COLUMNS = InputColumns()


# ----------------------------------------------------------------------------------------------- load


def load_problems(source: str | os.PathLike, *, id_prefix: str | None = None, split: str = "train",
                  config: str | None = None, columns: InputColumns = DEFAULT_COLUMNS) -> list[Problem]:
    """Read problems from a ``.jsonl``, ``.json`` or ``.parquet`` file, or from a `datasets` dataset.

    `source` is a dataset when `is_dataset_source` says so: a directory, or a name that is no path (a hub id).
    `split` and `config` pick a dataset's split and configuration; files ignore them. Rows without an id get
    ``f"{id_prefix or default}-{row index}"`` (row index 0-based, counting problems, not lines; the default is
    the file stem, or the dataset's last name component and split). Raises `DataError` on any bad input.
    """
    if is_dataset_source(source):
        from gradalign.data.external import load_dataset_rows  # lazy: importing `datasets` takes seconds

        dataset = load_dataset_rows(str(source), split=split, config=config)
        rows = ((f"row {i} (0-based)", row) for i, row in enumerate(dataset.rows))
        prefix = dataset.id_prefix if id_prefix is None else id_prefix
        return _problems_from_rows(rows, name=dataset.name, id_prefix=prefix, columns=columns)
    path = Path(source)
    name = str(path)
    if path.suffix not in _SUFFIXES:
        raise DataError(f"{name}: unknown file type '{path.suffix}' (expected .jsonl, .json or .parquet)")
    if not path.is_file():
        raise DataError(f"{name}: file not found")
    prefix = path.stem if id_prefix is None else id_prefix
    return _problems_from_rows(_read_rows(path), name=name, id_prefix=prefix, columns=columns)


def is_dataset_source(source: str | os.PathLike) -> bool:
    """Whether `load_problems` reads `source` as a `datasets` dataset rather than as a problem file.

    An existing file is a problem file (an unknown suffix is refused as today), and so is a missing path with a
    problem-file suffix (so a typo says "file not found", not "no such dataset on the hub"); a directory or any
    other name is a dataset.
    """
    path = Path(source)
    return not (path.is_file() or path.suffix in _SUFFIXES)


def _problems_from_rows(rows: Iterable[tuple[str, Any]], *, name: str, id_prefix: str,
                        columns: InputColumns) -> list[Problem]:
    """Validate (row label, raw row) pairs into problems; `name` (file or dataset) starts every message."""
    problems: list[Problem] = []
    first_seen: dict[str, str] = {}  # id -> row label, to name both rows of a duplicate
    first_kind: tuple[str, str] | None = None  # (kind of prompt, row label) of the first row
    floats: dict[str, list[str]] = {"whole": [], "kept": []}  # row labels of float answers, by what became of them
    for index, (where, row) in enumerate(rows):
        problem = _parse_row(row, where=f"{name}: {where}", default_id=f"{id_prefix}-{index}", floats=floats,
                             columns=columns)
        if problem.id in first_seen:
            raise DataError(f"{name}: {where}: field '{columns.id}' duplicates {problem.id!r} from "
                            f"{first_seen[problem.id]}")
        first_seen[problem.id] = where
        # One batch is tokenized one way (chat template or plain text): a mixed file fails deep in tokenization.
        kind = "text" if isinstance(problem.prompt, str) else "a chat (list of messages)"
        if first_kind is None:
            first_kind = (kind, where)
        elif kind != first_kind[0]:
            raise DataError(f"{name}: {where}: field '{columns.prompt}' is {kind} but the one at {first_kind[1]} is "
                            f"{first_kind[0]}; one file must use one kind of prompt")
        problems.append(problem)
    if not problems:
        raise DataError(f"{name}: no problems")
    _warn_float_answers(name, floats)
    return problems


def _warn_float_answers(name: str, floats: dict[str, list[str]]) -> None:
    """One warning line per kind of float answer, with a count and the first row."""
    if floats["whole"]:
        log.warning("%s: %d answers were numbers with a fractional part .0 and were written as integers (first at %s)",
                    name, len(floats["whole"]), floats["whole"][0])
    if floats["kept"]:
        log.warning("%s: %d answers were non-integral numbers and were kept as Python writes them (first at %s); "
                    "exact-match verifiers compare that text: write such answers as strings", name,
                    len(floats["kept"]), floats["kept"][0])


def _read_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """Yield (row label for messages, raw row) pairs; the label says how the row is counted."""
    name = str(path)
    if path.suffix == ".jsonl":
        with path.open(encoding="utf-8") as f:
            lines = enumerate(f, start=1)
            while True:
                try:
                    lineno, line = next(lines)
                except StopIteration:
                    break
                except UnicodeDecodeError:
                    raise _not_utf8(path) from None
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"{name}: line {lineno}: malformed JSON ({one_line(e.msg)})") from None
                except ValueError as e:  # e.g. an integer of more than 4300 digits
                    raise DataError(f"{name}: line {lineno}: unreadable JSON ({one_line(e)})") from None
                yield f"line {lineno}", row
    elif path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError:
            raise _not_utf8(path) from None
        except json.JSONDecodeError as e:
            raise DataError(f"{name}: malformed JSON ({one_line(e.msg)} at line {e.lineno})") from None
        except ValueError as e:  # e.g. an integer of more than 4300 digits
            raise DataError(f"{name}: unreadable JSON ({one_line(e)})") from None
        if not isinstance(rows, list):
            raise DataError(f"{name}: expected a JSON list of objects (got {type(rows).__name__})")
        for i, row in enumerate(rows):
            yield f"row {i} (0-based)", row
    else:
        import pyarrow.parquet as pq  # lazy: only parquet users pay for the import

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as e:  # pyarrow raises several types for corrupt/foreign files
            raise DataError(f"{name}: unreadable parquet file ({one_line(e)})") from None
        for i, row in enumerate(rows):
            yield f"row {i} (0-based)", row


def _not_utf8(path: Path) -> DataError:
    """The error for a file that is not UTF-8, naming the line and column of the first bad byte.

    Decoding streams in chunks, so the codec's own offsets are relative to a chunk: find the byte again here
    (only on this error path). Lines are counted as text mode counts them (universal newlines).
    """
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        before = data[:e.start].decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
        line = before.count("\n") + 1
        column = len(before) - (before.rfind("\n") + 1) + 1
        return DataError(f"{path}: line {line}: not valid UTF-8 (byte 0x{data[e.start]:02x} at column {column}); "
                         f"save the file as UTF-8")
    return DataError(f"{path}: not valid UTF-8; save the file as UTF-8")  # unreachable unless the file changed


def _parse_row(row: Any, *, where: str, default_id: str, floats: dict[str, list[str]] | None = None,
               columns: InputColumns = DEFAULT_COLUMNS) -> Problem:
    """Turn one raw row (either layout) into a `Problem`; `where` prefixes every error."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: row is not a JSON object (got {type(row).__name__})")
    row = dict(row)  # we pop consumed keys; what is left becomes metadata
    metadata: dict[str, Any] = {}

    if "reward_model" in row:  # verl layout
        reward_model = row.pop("reward_model")
        if not isinstance(reward_model, dict) or "ground_truth" not in reward_model:
            raise DataError(f"{where}: field 'reward_model.ground_truth' is missing")
        answer = _answer(reward_model["ground_truth"], where, "reward_model.ground_truth", floats)
        source = row.pop("data_source", None)
        source_field = "data_source"
        extra_info = row.pop("extra_info", None) or {}
        if not isinstance(extra_info, dict):
            raise DataError(f"{where}: field 'extra_info' must be an object (got {type(extra_info).__name__})")
        extra_info = dict(extra_info)
        raw_id, id_field = extra_info.pop("index", None), "extra_info.index"
        if raw_id is None:
            raw_id, id_field = row.pop(columns.id, None), columns.id
        metadata.update(extra_info)
    else:  # TRL layout
        key = next((k for k in columns.answer_keys() if k in row), None)
        if key is None:
            raise DataError(f"{where}: field '{columns.answer}' (or 'reward_model.ground_truth') is missing")
        answer = _answer(row.pop(key), where, key, floats)
        source, source_field = row.pop(columns.source, None), columns.source
        raw_id, id_field = row.pop(columns.id, None), columns.id

    if columns.prompt not in row:
        raise DataError(f"{where}: field '{columns.prompt}' is missing")
    prompt = _prompt(row.pop(columns.prompt), where, columns.prompt)

    if source is None:
        source = "unknown"
    elif not isinstance(source, str) or not source.strip():
        raise DataError(f"{where}: field '{source_field}' must be a non-empty string")

    problem_id = default_id if raw_id is None else _id(raw_id, where, id_field)

    # Our own files carry metadata explicitly: a dict in JSON, a JSON string in Parquet.
    explicit = row.pop("metadata", None)
    if explicit is not None and not isinstance(explicit, dict):
        raise DataError(f"{where}: field 'metadata' must be an object (got {type(explicit).__name__})")
    encoded = row.pop(METADATA_COLUMN, None)
    metadata.update(row)  # every other key of the row
    metadata.update(explicit or {})
    if encoded is not None:
        try:
            decoded = json.loads(encoded)
        except (TypeError, json.JSONDecodeError):
            decoded = None
        if not isinstance(decoded, dict):
            raise DataError(f"{where}: field '{METADATA_COLUMN}' is not a JSON object string")
        metadata.update(decoded)

    return Problem(id=problem_id, prompt=prompt, answer=answer, source=source, metadata=metadata)


def _answer(value: Any, where: str, field: str, floats: dict[str, list[str]] | None = None) -> str:
    """The answer as text. Floats: NaN/inf refused; whole numbers written as integers ("70.0" -> "70"), other
    floats kept as ``str``; both counted in `floats` (row labels) for one warning line per file."""
    if value is None:
        raise DataError(f"{where}: field '{field}' is null")
    # bool is an int subclass, but "True" as a ground truth is almost surely a data bug.
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise DataError(f"{where}: field '{field}' must be a string or number (got {type(value).__name__})")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise DataError(f"{where}: field '{field}' is {value} (not a finite number); no completion can match it")
        label = where.rsplit(": ", 1)[-1]  # the row label alone: the warning names the file once
        if value.is_integer() and abs(value) < _EXACT_FLOAT_INT:
            value = int(value)
            if floats is not None:
                floats["whole"].append(label)
        elif floats is not None:
            floats["kept"].append(label)
    answer = str(value)
    if not answer.strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return answer


def _id(value: Any, where: str, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(f"{where}: field '{field}' must be a string or integer (got {type(value).__name__})")
    if not str(value).strip():
        raise DataError(f"{where}: field '{field}' is empty")
    return str(value)


def _prompt(value: Any, where: str, field: str = "prompt") -> Prompt:
    """A non-empty string, or a non-empty chat list of {"role", "content"} string messages; `field` is its column."""
    if value is None:
        raise DataError(f"{where}: field '{field}' is null")
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{field}' is empty")
        _check_prompt_length(len(value), where, field)
        return value
    if not isinstance(value, list):
        raise DataError(f"{where}: field '{field}' must be a string or a chat list (got {type(value).__name__})")
    if not value:
        raise DataError(f"{where}: field '{field}' is empty")
    messages = []
    for i, msg in enumerate(value):
        if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
            raise DataError(f"{where}: field '{field}[{i}]' must be a message with string 'role' and 'content'")
        if msg["role"] not in CHAT_ROLES:
            raise DataError(f"{where}: field '{field}[{i}].role' is {msg['role']!r} "
                            f"(expected one of: {', '.join(CHAT_ROLES)})")
        # Only role and content matter to chat templates here; other keys (or the None-filled fields
        # Parquet adds to structs) would break round trips.
        messages.append({"role": msg["role"], "content": msg["content"]})
    _check_prompt_length(sum(len(m["content"]) for m in messages), where, field)
    return messages


def _check_prompt_length(n: int, where: str, field: str = "prompt") -> None:
    if n > MAX_PROMPT_CHARS:
        raise DataError(f"{where}: field '{field}' is {n:,} characters long; the limit is {MAX_PROMPT_CHARS:,} "
                        f"(MAX_PROMPT_CHARS in gradalign.data.io)")


# ----------------------------------------------------------------------------------------------- save


def save_problems(path: str | os.PathLike, problems: Iterable[Problem], style: str = "trl") -> None:
    """Write problems atomically to ``.jsonl`` or ``.parquet`` in the "trl" or "verl" layout.

    Parquet stores metadata as a JSON string column ``metadata_json``: per-problem dicts of mixed keys
    and types have no single arrow schema. verl style turns str prompts into one user message.
    """
    path = Path(path)
    if style not in ("trl", "verl"):
        raise ValueError(f"unknown style {style!r} (choose from: trl, verl)")
    if path.suffix not in (".jsonl", ".parquet"):
        raise ValueError(f"{path}: can only save .jsonl or .parquet (got '{path.suffix}')")
    parquet = path.suffix == ".parquet"
    rows = [_to_row(p, style, encode_metadata=parquet) for p in problems]

    with atomic_path(path) as tmp:
        if parquet:
            import pyarrow as pa
            import pyarrow.parquet as pq

            if style == "trl" and len({isinstance(r["prompt"], str) for r in rows}) > 1:
                # An arrow column has one type: text and chat prompts cannot share it.
                raise ValueError(f"{path}: parquet needs all prompts to be text or all chat (use style='verl')")
            pq.write_table(pa.Table.from_pylist(rows), tmp)
        else:
            tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _to_row(p: Problem, style: str, *, encode_metadata: bool) -> dict[str, Any]:
    metadata_json = json.dumps(p.metadata, sort_keys=True)
    if style == "trl":
        row: dict[str, Any] = {"id": p.id, "prompt": p.prompt, "answer": p.answer, "source": p.source}
        if encode_metadata:
            row[METADATA_COLUMN] = metadata_json
        else:
            row["metadata"] = p.metadata
        return row

    prompt = [{"role": "user", "content": p.prompt}] if isinstance(p.prompt, str) else p.prompt
    extra_info: dict[str, Any] = {"index": p.id}
    row = {"prompt": prompt, "data_source": p.source, "reward_model": {"ground_truth": p.answer}}
    if encode_metadata:
        row[METADATA_COLUMN] = metadata_json
    else:
        if "index" in p.metadata:  # it would be read back as the id
            raise ValueError(f"problem {p.id!r}: metadata key 'index' clashes with verl's extra_info.index")
        extra_info.update(p.metadata)
    row["extra_info"] = extra_info
    return row


def problems_to_rows(problems: Iterable[Problem]) -> list[dict[str, Any]]:
    """Rows for ``datasets.Dataset.from_list`` fed to TRL: prompt, answer, problem_id, source, metadata_json."""
    return [
        {
            PROMPT_COLUMN: p.prompt,
            ANSWER_COLUMN: p.answer,
            ID_COLUMN: p.id,
            SOURCE_COLUMN: p.source,
            METADATA_COLUMN: json.dumps(p.metadata, sort_keys=True),
        }
        for p in problems
    ]
