"""A local transformers model as the judge: offline, free, deterministic.

Two ways to get a verdict (`mode`):

- `loglik` (default): forced choice. After the judge prompt, the model's answer is started
  exactly as the prompt asks (`{"<question>": {"winner": "`) and the three completions `A"`,
  `B"` and `tie"` are scored by their total log-probability - the probability that the model
  would have written that answer. The most likely one wins. Every verdict parses, no sampling
  is involved, and the reason records the three log-probabilities. Each question is scored
  independently of the other answers.
- `generate`: greedy generation of the whole JSON answer, parsed like an API judge's; a model
  that does not follow the format yields "unparsable" verdicts (never guessed).

The shared part of the five forced-choice texts (prompt, paper, reviews) runs once; only the
short tails run per question and answer.

A local model has a fixed context (`max_position_embeddings`; transformers 4.38.2 fails past it
with an IndexError): `fit_paper` trims the paper's head, in tokens, so the prompt and the answer
fit, and the run reports how many papers it trimmed. Reviews are never trimmed: a pair whose
reviews alone do not fit stops the run with a clear message.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Tuple

from reviewgpt.errors import UserError
from reviewgpt.eval.judge.prompt import QUESTIONS, TRUNCATION_MARK, WINNERS, Verdict, build_messages

log = logging.getLogger(__name__)

MODES = ("loglik", "generate")


@dataclass(frozen=True)
class LocalJudgeConfig:
    model_dir: str = field(metadata={"help": "a transformers model directory (model + tokenizer)"})
    mode: str = field(default="loglik", metadata={"help": "loglik (forced choice) or generate"})
    max_new_tokens: int = field(default=768, metadata={"help": "generate mode: answer length limit"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {self.mode!r}")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, not {self.max_new_tokens!r}")


def render_chat(tokenizer, messages: List[Dict[str, str]]) -> str:
    """The prompt in the model's chat format when it has one, else plain text. The system text is
    folded into the user turn because Gemma's chat template has no system role."""
    folded = "\n\n".join(m["content"] for m in messages)
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": folded}], tokenize=False, add_generation_prompt=True
        )
    return f"{folded}\n\nAnswer:\n"


def _encode(tokenizer, text: str) -> List[int]:
    # Chat templates write the BOS text themselves; otherwise let the tokenizer add it.
    has_bos = bool(tokenizer.bos_token) and text.startswith(tokenizer.bos_token)
    return tokenizer(text, add_special_tokens=not has_bos)["input_ids"]


def _common_prefix_length(sequences: List[List[int]]) -> int:
    n = min(len(s) for s in sequences)
    for i in range(n):
        if any(s[i] != sequences[0][i] for s in sequences[1:]):
            return i
    return n


def load_judge_model(model_dir: str, device: str = "auto"):
    import torch

    from reviewgpt.models import load_model, load_tokenizer

    if not Path(model_dir).is_dir():
        raise UserError(
            f"judge model directory {model_dir!r} does not exist; pass --judge hf:DIR with a "
            "transformers model directory."
        )
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model, family, _ = load_model(model_dir, device=device, dtype=torch.bfloat16 if device == "cuda" else torch.float32,
                                  what="judge model", fix="pass --judge hf:DIR")
    model.eval()
    return model, load_tokenizer(model_dir, family)


class LocalJudge:
    """`verdict(messages)` (loglik mode) or `complete(messages)` (generate mode)."""

    single_threaded = True  # one model, one forward at a time: threads would only contend

    def __init__(self, config: LocalJudgeConfig, model=None, tokenizer=None):
        self.config = config
        if model is None:
            model, tokenizer = load_judge_model(config.model_dir, config.device)
        self.model, self.tokenizer = model, tokenizer
        self.use_prefix_cache = True

    @property
    def identity(self) -> str:
        c = self.config
        detail = f"|max_new_tokens={c.max_new_tokens}" if c.mode == "generate" else ""
        return f"hf:{Path(c.model_dir).resolve().name}|mode={c.mode}{detail}"

    @property
    def returns_verdicts(self) -> bool:
        return self.config.mode == "loglik"

    def complete(self, messages: List[Dict[str, str]]) -> str:
        import torch

        ids = torch.tensor(
            [_encode(self.tokenizer, render_chat(self.tokenizer, messages))], device=self.model.device
        )
        with torch.no_grad():
            out = self.model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=self.config.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id,
            )
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    def answer_logprobs(self, messages: List[Dict[str, str]]) -> Dict[str, Dict[str, float]]:
        """{question: {winner: total log-probability of answering it}}."""
        import torch

        from reviewgpt.eval.judge.scoring import hidden_states, logits_at

        prompt = render_chat(self.tokenizer, messages)
        texts = {(q, w): f'{prompt}{{"{q}": {{"winner": "{w}"' for q in QUESTIONS for w in WINNERS}
        encoded = {k: _encode(self.tokenizer, t) for k, t in texts.items()}
        shared = _common_prefix_length(list(encoded.values())) if self.use_prefix_cache else 0
        device = self.model.device
        scores: Dict[str, Dict[str, float]] = {}
        with torch.no_grad():
            past, last_hidden = None, None
            if shared:
                hidden, past = hidden_states(
                    self.model,
                    torch.tensor([encoded[QUESTIONS[0], "A"][:shared]], device=device),
                    use_cache=True,
                )
                last_hidden = hidden[:, -1:]
                past = past.to_legacy_cache() if hasattr(past, "to_legacy_cache") else past
            for question in QUESTIONS:
                options = [encoded[question, w] for w in WINNERS]
                # Score from where the three answers diverge, so all three are compared given one context.
                start = max(_common_prefix_length(options), 1)
                scores[question] = {}
                for winner, ids in zip(WINNERS, options):
                    # A fresh legacy tuple each time: the model appends to a new cache, ours stays intact.
                    hidden, _ = hidden_states(
                        self.model,
                        torch.tensor([ids[shared:]], device=device),
                        past_key_values=past,
                        use_cache=past is not None,
                    )
                    if last_hidden is not None:
                        hidden = torch.cat([last_hidden, hidden], dim=1)
                    offset = shared - 1 if last_hidden is not None else 0  # position of hidden[:, 0]
                    logits = logits_at(self.model, hidden[0, start - 1 - offset : len(ids) - 1 - offset])
                    targets = torch.tensor(ids[start:], device=device)
                    logprob = torch.log_softmax(logits, -1).gather(-1, targets[:, None]).sum()
                    scores[question][winner] = float(logprob)
        return scores

    @property
    def context_tokens(self) -> int:
        """The most tokens the judge model takes (prompt + answer); 0 when its config does not say."""
        return int(getattr(self.model.config, "max_position_embeddings", 0) or 0)

    def _answer_tokens(self) -> int:
        """Tokens kept free after the prompt: the answer generated, or the longest forced-choice tail."""
        if self.config.mode == "generate":
            return self.config.max_new_tokens
        tails = [f'{{"{q}": {{"winner": "{w}"' for q in QUESTIONS for w in WINNERS]
        return max(len(self.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in tails) + 8

    def _prompt_tokens(self, review_a: str, review_b: str, paper: str) -> int:
        messages = build_messages(review_a, review_b, paper)
        return len(_encode(self.tokenizer, render_chat(self.tokenizer, messages)))

    def fit_paper(self, review_a: str, review_b: str, paper: str) -> Tuple[str, bool]:
        """`paper` with its head kept so the judge prompt and answer fit the model's context, and
        whether it was cut. Both orders of a pair take the same text (A and B only swap places)."""
        if not self.context_tokens:
            return paper, False
        budget = self.context_tokens - self._answer_tokens()
        needed = self._prompt_tokens(review_a, review_b, paper)
        if needed <= budget:
            return paper, False
        if self._prompt_tokens(review_a, review_b, "") > budget:
            raise UserError(
                f"the two reviews alone need {self._prompt_tokens(review_a, review_b, '')} tokens of the judge "
                f"prompt, more than {self.config.model_dir}'s context of {self.context_tokens} tokens (minus "
                f"{self._answer_tokens()} for the answer); use a judge model with a longer context."
            )
        text = paper[: -len(TRUNCATION_MARK)] if paper.endswith(TRUNCATION_MARK) else paper
        chars_per_token = len(text) / max(1, len(self.tokenizer(text, add_special_tokens=False)["input_ids"]))
        keep = len(text)
        while keep > 0:  # cut by the excess in tokens, measured on the whole prompt, until it fits
            keep -= max(1, int((needed - budget) * chars_per_token) + 1)
            needed = self._prompt_tokens(review_a, review_b, text[: max(keep, 0)] + TRUNCATION_MARK)
            if needed <= budget:
                return text[: max(keep, 0)] + TRUNCATION_MARK, True
        return "", True

    def verdict(self, messages: List[Dict[str, str]]) -> Verdict:
        scores = self.answer_logprobs(messages)
        winners = {q: max(WINNERS, key=lambda w, q=q: scores[q][w]) for q in QUESTIONS}
        reasons = {
            q: "forced choice, log p: " + " ".join(f"{w}={scores[q][w]:.3f}" for w in WINNERS)
            for q in QUESTIONS
        }
        return Verdict(winners=winners, reasons=reasons)
