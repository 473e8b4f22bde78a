"""The prompt/completion swap that turns a long-completion record into a short-completion one.

The strings are part of the dataset format (REFERENCE.md section 2) and must not change.
"""

from __future__ import annotations

SWAP_NO_INPUT = "Predict the prompt that generated the following AI output."
SWAP_WITH_INPUT = (
    "Predict the prompt that generated the below AI output given the following context. Context: "
)


def swapped_instruction(input_text: str) -> str:
    """The new instruction of a swapped record, given the original input."""
    return SWAP_WITH_INPUT + input_text if input_text else SWAP_NO_INPUT


def swap(instruction: str, input_text: str, output: str) -> tuple[str, str, str]:
    """(instruction, input, output) of the swapped record.

    >>> swap("Name a colour.", "", "Blue is a colour that many people like.")
    ('Predict the prompt that generated the following AI output.', 'Blue is a colour that many people like.', 'Name a colour.')
    """
    return swapped_instruction(input_text), output, instruction
