"""The Stanford Alpaca training prompt templates (exact text; REFERENCE.md section 4)."""

from __future__ import annotations

TEMPLATE_NAME = "alpaca"

PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:"
)


def format_prompt(instruction: str, input_text: str) -> str:
    """The templated prompt; the no-input template is used when `input_text` is empty.

    The text ends right after `### Response:`; the output follows it directly, as in the recipe.
    """
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)
