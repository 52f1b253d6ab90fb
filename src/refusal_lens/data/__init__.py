"""Prompt sets: local files, the offline registry, hub loaders, splits, de-duplication.

- ``load_prompt_file(path, column=None)``: a local .txt/.json/.jsonl/.csv/.parquet file.
- ``load_dataset(name, source=None, split=None, categories=None, limit=None)``: a registered
  set (``list_datasets()``); ``source`` is a local copy of a hub set.
- ``load_prompts(spec, ...)``: either of the two, from one string (what ``--dataset`` /
  ``--prompts`` resolve through).
- ``deduplicate``, ``find_duplicates``, ``check_disjoint`` (raises ``LeakageError``), ``near_duplicates``
  (rephrasings that share most content words).
"""

from refusal_lens.data.dedup import (
    LeakageError,
    check_disjoint,
    deduplicate,
    find_duplicates,
    near_duplicates,
    normalise_text,
)
from refusal_lens.data.errors import DataError
from refusal_lens.data.files import SUPPORTED_EXTENSIONS, load_prompt_file
from refusal_lens.data.offline import fill_template
from refusal_lens.data.prompts import Prompt
from refusal_lens.data.registry import (
    REGISTRY,
    DatasetInfo,
    get_dataset_info,
    list_datasets,
    load_dataset,
    load_prompts,
    offline_alternatives,
    select,
)
from refusal_lens.data.splits import SPLITS, assign_split

__all__ = [
    "REGISTRY", "SPLITS", "SUPPORTED_EXTENSIONS", "DataError", "DatasetInfo", "LeakageError", "Prompt",
    "assign_split", "check_disjoint", "deduplicate", "fill_template", "find_duplicates", "near_duplicates",
    "get_dataset_info", "list_datasets", "load_dataset", "load_prompt_file", "load_prompts",
    "normalise_text", "offline_alternatives", "select",
]
