"""Data: chat JSONL, narrow-task generators, transforms (inoculation, mixing, splits), question sets.

May import ``emprobe.models`` and ``emprobe.hooks``.
"""

from emprobe.data.chat_io import (
    ChatRecords,
    from_hf_dataset,
    iter_chat_jsonl,
    read_chat_jsonl,
    to_hf_dataset,
    validate_record,
    write_chat_jsonl,
)
from emprobe.data.code_check import check_code, scan_answers, vulnerable_share
from emprobe.data.generators import generate, generate_pairs, tasks
from emprobe.data.transforms import (
    INOCULATION_PROMPTS,
    inoculate,
    inoculation_prompt,
    mix,
    neutral_prompt,
    random_string_prompt,
    split,
)

__all__ = [
    "ChatRecords",
    "INOCULATION_PROMPTS",
    "check_code",
    "from_hf_dataset",
    "generate",
    "generate_pairs",
    "inoculate",
    "inoculation_prompt",
    "iter_chat_jsonl",
    "mix",
    "neutral_prompt",
    "random_string_prompt",
    "read_chat_jsonl",
    "scan_answers",
    "split",
    "tasks",
    "to_hf_dataset",
    "validate_record",
    "vulnerable_share",
    "write_chat_jsonl",
]
