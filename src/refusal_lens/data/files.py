"""Prompt sets from local files: .txt, .json, .jsonl, .csv, .parquet.

Every file becomes a list of :class:`~refusal_lens.data.prompts.Prompt` with ids
``<file stem>:<index>`` (0-based position among the prompts the file yields), a split
from :func:`~refusal_lens.data.splits.assign_split`, and a category when the file has one.

Which field holds the text:

- ``.txt``: one prompt per line; blank lines are skipped.
- ``.json``: a list of strings, or a list of objects; ``.jsonl``: one string or object per
  line (blank lines skipped).
- ``.csv`` / ``.parquet``: a table.

For objects and tables the text is the ``column`` argument when given, otherwise the first
of :data:`DEFAULT_TEXT_COLUMNS` the file has (exact name first, then ignoring case). The
category is ``category_column`` when given, otherwise a ``category`` column when present.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from refusal_lens.data.errors import DataError
from refusal_lens.data.prompts import Prompt
from refusal_lens.data.splits import assign_split

SUPPORTED_EXTENSIONS = (".txt", ".json", ".jsonl", ".csv", ".parquet")
SUPPORTED_EXTENSIONS_TEXT = "(.txt one prompt a line, .json, .jsonl or .csv)"
DEFAULT_TEXT_COLUMNS = ("instruction", "prompt", "goal", "behavior", "question", "text")
DEFAULT_CATEGORY_COLUMNS = ("category",)


def load_prompt_file(path: str | Path, column: str | None = None, *,
                     category_column: str | None = None, id_column: str | None = None,
                     source: str | None = None) -> list[Prompt]:
    """Read a local prompt file.

    ``column`` names the field holding the instruction (objects and tables only);
    ``category_column`` the harm category; ``id_column`` a field whose value replaces the
    index in the id (``<stem>:<value>``). ``source`` defaults to the file stem.
    Raises :class:`DataError` for a missing file, an unknown extension, malformed JSON
    (with the line number), a column the file does not have (listing the ones it has), a
    row without text, and an empty set.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"Prompt file not found: {path}. Check the path, or use a named set "
                        f"(`refusal-lens datasets list`).")
    if path.is_dir():
        raise DataError(f"{path} is a folder; give a prompt file ({', '.join(SUPPORTED_EXTENSIONS)}).")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_EXTENSIONS:
        raise DataError(f"Unsupported prompt file extension {path.suffix or '(none)'!r} for {path.name}; "
                        f"supported: {', '.join(SUPPORTED_EXTENSIONS)}.")
    try:
        rows = _read_rows(path, suffix, column)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason}); a prompt file is "
                        f"UTF-8 {SUPPORTED_EXTENSIONS_TEXT}, or a .parquet table.") from None
    return records_to_prompts(rows, name=path.name, stem=path.stem, source=source or path.stem,
                              column=column, category_column=category_column,
                              id_column=id_column)


def _read_rows(path: Path, suffix: str, column: str | None) -> list[Any]:
    if suffix == ".txt":
        if column is not None:
            raise DataError(f"{path.name} is a text file (one prompt per line) and has no columns; "
                            f"drop the column option ({column!r}).")
        return _read_txt(path)
    if suffix == ".json":
        return _read_json(path)
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".csv":
        return _read_csv(path)
    return _read_parquet(path)


def records_to_prompts(rows: Sequence[Any], *, name: str, stem: str, source: str,
                       column: str | None = None, category_column: str | None = None,
                       id_column: str | None = None, columns: Sequence[str] | None = None,
                       ) -> list[Prompt]:
    """Turn strings / dicts into prompts (shared by every file format).

    ``name`` is used in messages, ``stem`` in ids; ``columns`` is the table's column list
    (computed from the rows when not given).
    """
    if not rows:
        raise DataError(f"{name} holds no prompts; give a file with at least one prompt.")
    dict_rows = [r for r in rows if isinstance(r, dict)]
    if columns is None:
        seen: dict[str, None] = {}
        for r in dict_rows:
            for k in r:
                seen.setdefault(str(k), None)
        columns = list(seen)
    text_key = cat_key = None
    if dict_rows:
        text_key = _pick_column(columns, column, DEFAULT_TEXT_COLUMNS, name, role="text")
        cat_key = _pick_column(columns, category_column, DEFAULT_CATEGORY_COLUMNS, name,
                               role="category", required=category_column is not None)
        if id_column is not None:
            _pick_column(columns, id_column, (), name, role="id")
    elif column is not None:
        raise DataError(f"{name} holds plain strings, not objects, so it has no column {column!r}; "
                        f"drop the column option.")

    prompts: list[Prompt] = []
    for index, row in enumerate(rows):
        category = None
        pid = str(index)
        if isinstance(row, str):
            text = row
        elif isinstance(row, dict):
            text = row.get(text_key)
            if cat_key is not None and row.get(cat_key) not in (None, ""):
                category = str(row[cat_key])
            if id_column is not None and row.get(id_column) not in (None, ""):
                pid = str(row[id_column])
        else:
            raise DataError(f"{name}: row {index + 1} is a {type(row).__name__}, expected a string "
                            f"or an object with a {text_key or 'text'!r} field.")
        if not isinstance(text, str) or not text.strip():
            where = f" field {text_key!r}" if isinstance(row, dict) else ""
            raise DataError(f"{name}: row {index + 1} has no text{where} (got {text!r}); "
                            f"fill it in or remove the row.")
        full_id = f"{stem}:{pid}"
        prompts.append(Prompt(id=full_id, text=text.strip(), source=source, category=category,
                              split=assign_split(full_id)))
    ids = [p.id for p in prompts]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{name}: id {dup!r} occurs more than once; the id column must be unique.")
    return prompts


def _pick_column(columns: Sequence[str], wanted: str | None, defaults: Iterable[str], name: str,
                 *, role: str, required: bool = True) -> str | None:
    if wanted is not None:
        if wanted in columns:
            return wanted
        lower = {c.lower(): c for c in columns}
        key = wanted.strip().lower()
        hint = f" (did you mean {lower[key]!r}?)" if key in lower else ""
        raise DataError(f"{name} has no column {wanted!r}{hint}; its columns are: "
                        f"{', '.join(map(repr, columns)) or '(none)'}.")
    defaults = tuple(defaults)
    for d in defaults:
        if d in columns:
            return d
    lower = {c.lower(): c for c in columns}
    for d in defaults:
        if d.lower() in lower:
            return lower[d.lower()]
    if role == "text" and required:
        raise DataError(f"{name} has none of the default text columns ({', '.join(defaults)}); "
                        f"name the one holding the prompt (column option / --column). Its columns are: "
                        f"{', '.join(map(repr, columns)) or '(none)'}.")
    return None


def _read_txt(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8-sig")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _read_json(path: Path) -> list[Any]:
    raw = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as error:
        raise DataError(f"{path.name} is not valid JSON: {error.msg} at line {error.lineno}, "
                        f"column {error.colno}. Fix the file (a JSON list of strings or objects; "
                        f"use .jsonl for one object per line).") from None
    if not isinstance(data, list):
        hint = ""
        if isinstance(data, dict):
            lists = [k for k, v in data.items() if isinstance(v, list)]
            if lists:
                hint = f" (the list may be under the key {lists[0]!r}: save that list on its own)"
        raise DataError(f"{path.name} holds a JSON {type(data).__name__}; expected a list of strings "
                        f"or of objects{hint}.")
    return data


def _read_jsonl(path: Path) -> list[Any]:
    rows = []
    with path.open(encoding="utf-8-sig") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise DataError(f"{path.name} line {lineno} is not valid JSON ({error.msg}, column "
                                f"{error.colno}); each line must be one JSON string or object.") from None
    return rows


def _read_csv(path: Path) -> list[dict]:
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None:
            raise DataError(f"{path.name} is empty; a CSV file needs a header row and at least one prompt.")
        rows = [dict(r) for r in reader]
    if not rows:
        raise DataError(f"{path.name} has a header but no rows; give at least one prompt.")
    return rows


def _read_parquet(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several types for a broken file
        raise DataError(f"{path.name} could not be read as Parquet ({error}).") from None
    return table.to_pylist()
