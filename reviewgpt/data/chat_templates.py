"""What a model's own tooling makes of our prompts: the ids of `apply_chat_template` (chat
formats) or trl's `tokenizer(text)` (Alpaca texts), which `PromptEncoder` reproduces exactly for
an untrimmed example, and which built-in format a tokenizer's own chat template writes."""

from __future__ import annotations

from typing import List, Optional

from reviewgpt.data.prompt import Template


def reference_ids(tokenizer, template: Template, paper: str, review: Optional[str] = None) -> List[int]:
    """The ids the model's own tooling makes of this text: `apply_chat_template` of the two-turn
    conversation for a chat format (the tokenizer must carry that format's chat template), trl
    0.7.11's `tokenizer(text)` for an Alpaca text (review None: the generation prompt)."""
    from reviewgpt.data.prompt import INSTRUCTION

    if template.chat:
        conversation = [{"role": "user", "content": f"{INSTRUCTION}\n\n{template.content(paper)}"}]
        if review is not None:
            conversation.append({"role": "assistant", "content": template.content(review)})
        return list(tokenizer.apply_chat_template(conversation, tokenize=True, add_generation_prompt=review is None))
    if review is None:
        return list(tokenizer(template.prompt(paper))["input_ids"])
    text = template.text(paper, review) + (tokenizer.eos_token if template.append_eos else "")
    return list(tokenizer(text)["input_ids"])


def chat_template_of(tokenizer) -> Optional[str]:
    """The name of the built-in chat format that the tokenizer's own chat template writes, if any."""
    from reviewgpt.data.prompt import INSTRUCTION, TEMPLATES

    if not getattr(tokenizer, "chat_template", None):
        return None
    paper, review = "PAPER-TEXT", "REVIEW-TEXT"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": f"{INSTRUCTION}\n\n{paper}"}, {"role": "assistant", "content": review}],
            tokenize=False)
    except Exception:  # noqa: BLE001 - a template that refuses this conversation matches none of ours
        return None
    for template in TEMPLATES.values():
        if template.chat and template.text(paper, review) == rendered:
            return template.name
    return None
