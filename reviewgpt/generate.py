"""Generate one review per paper, appending JSONL lines as they are written.

The model folder may be a merged model (`reviewgpt merge`), a training run's adapter folder
(base + adapter, unmerged) or a plain base model. The prompt is built by the same
`PromptEncoder` as training, with the paper trimmed to the input budget (7168 tokens by default,
as the reference did). A rerun skips papers already in the output file, so an interrupted run
loses at most the review in progress.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from reviewgpt.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSettings:
    max_input_tokens: Optional[int] = None  # None: the model's recipe value, else 7168
    max_new_tokens: Optional[int] = None
    temperature: float = 0.0
    top_p: float = 1.0
    template: Optional[str] = None
    limit: Optional[int] = None


def done_ids(output_path: Path) -> set:
    """Ids already reviewed; a last line cut short by a crash is dropped and rewritten."""
    if not output_path.is_file():
        return set()
    ids, good = set(), []
    for line in output_path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s: dropping a line cut short by an earlier crash", output_path)
            continue
        ids.add(str(row["id"]))
        good.append(line)
    output_path.write_text("".join(line + "\n" for line in good), encoding="utf-8")
    return ids


def load_for_generation(model_dir: Path):
    """(model, tokenizer, metadata) from a merged model, an adapter run folder or a base model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from reviewgpt.merge import METADATA_FILE, base_of, read_adapter_recipe
    from reviewgpt.models import FAMILIES, load_config, require_local_or_cached

    if not model_dir.is_dir():
        raise UserError(f"--model {model_dir}: no such folder; pass a merged model or a `reviewgpt train` run.")
    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        recipe = read_adapter_recipe(model_dir)
        base = base_of(model_dir, None)
        require_local_or_cached(base, "the adapter's base model", "`reviewgpt merge ADAPTER --base DIR` and --model")
        family = recipe.get("family", "llama")
        config = load_config(base, family) if family in FAMILIES else None
        model = AutoModelForCausalLM.from_pretrained(base, config=config, torch_dtype=dtype)
        model = PeftModel.from_pretrained(model, str(model_dir))
        meta = {"family": family, "template": recipe.get("template", "alpaca-reference"),
                "review_max_input_tokens": recipe.get("review_max_input_tokens", 7168),
                "max_new_tokens": recipe.get("max_new_tokens", 1024)}
    else:
        meta_path = model_dir / METADATA_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if not (model_dir / "config.json").is_file():
            raise UserError(f"--model {model_dir}: no config.json or adapter_config.json; pass a merged model "
                            "folder or a `reviewgpt train` run folder.")
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    model.to("cuda" if cuda else "cpu").eval()
    model.config.use_cache = True
    return model, tokenizer, meta


def generate_reviews(model_dir, papers_path, output_path, settings: GenerationSettings = GenerationSettings()) -> dict:
    import torch
    from tqdm.auto import tqdm

    from reviewgpt.coverage import covered_criteria
    from reviewgpt.prompt import get_template
    from reviewgpt.records import load_papers
    from reviewgpt.tokenization import PromptEncoder

    model_dir, output_path = Path(model_dir), Path(output_path)
    papers = load_papers(papers_path)
    if settings.limit:
        papers = papers[: settings.limit]
    already = done_ids(output_path)
    todo = [p for p in papers if p.id not in already]
    log.info("%d paper(s), %d already reviewed in %s", len(papers), len(papers) - len(todo), output_path)
    if not todo:
        return {"papers": len(papers), "written": 0, "skipped": len(papers), "output": str(output_path)}

    model, tokenizer, meta = load_for_generation(model_dir)
    template = get_template(settings.template or meta.get("template", "alpaca-reference"))
    encoder = PromptEncoder(tokenizer, template)
    budget = settings.max_input_tokens or meta.get("review_max_input_tokens", 7168)
    max_new = settings.max_new_tokens or meta.get("max_new_tokens", 1024)
    stop_ids = [tokenizer.eos_token_id]
    for text in template.stop_strings:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            stop_ids.append(ids[0])
    output_path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(output_path, "a", encoding="utf-8") as out:
        for paper in tqdm(todo, desc="reviewing", unit="paper"):
            ids, paper_tokens, kept = encoder.encode_prompt(paper.paper, budget)
            input_ids = torch.tensor([ids], device=model.device)
            kwargs = dict(max_new_tokens=max_new, eos_token_id=stop_ids, pad_token_id=tokenizer.pad_token_id,
                          attention_mask=torch.ones_like(input_ids))
            if settings.temperature > 0:
                kwargs.update(do_sample=True, temperature=settings.temperature, top_p=settings.top_p)
            else:
                kwargs.update(do_sample=False)
            with torch.no_grad():
                generated = model.generate(input_ids, **kwargs)[0, len(ids):].tolist()
            finished = bool(generated) and generated[-1] in stop_ids
            review = tokenizer.decode(generated, skip_special_tokens=True)
            for text in template.stop_strings:
                review = review.split(text)[0]
            row = {
                "id": paper.id,
                "paper_id": paper.id,
                "review": review.strip(),
                "criteria": covered_criteria(review),
                "model": str(model_dir),
                "template": template.name,
                "input_tokens": len(ids),
                "paper_tokens": paper_tokens,
                "paper_truncated": kept < paper_tokens,
                "generated_tokens": len(generated),
                "finish_reason": "stop" if finished else "length",
            }
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
            out.flush()
            written += 1
    return {"papers": len(papers), "written": written, "skipped": len(papers) - len(todo), "output": str(output_path)}
