"""Train: records -> tokenized examples -> trl SFTTrainer (QLoRA) -> adapter in a run folder.

    loop.py         `reviewgpt train`: the orchestration (recipe -> model -> trainer -> run folder)
    dataset.py      tokenize loop, torch Dataset, pad collator
    resume.py       checkpoint scan, resume micro-batch and loss, trusted torch.load
    logs.py         JSONL log callback, loss curve, peak memory
    arguments.py    recipe -> TrainingArguments
    oom.py          CUDA out-of-memory recovery: retry from the newest checkpoint with less memory
    memory.py       the planner's prediction: a training step's peak GPU memory (architectures, calibration)
    plan.py         the planner's choices (`reviewgpt plan`, train's memory check, `checkpoint_skip_layers:
                    auto`): which micro-batch and how many kept layers fit, from memory.py's prediction
    bench.py        `reviewgpt bench`: tokens/s and peak memory per speed option
                    (bench_models.py: the models it measures; bench_timing.py: step timer, profiler)
    distributed.py  several GPUs: accelerate launch, DeepSpeed ZeRO-2 config
    speed/          the recipe's speed options as scoped patches of transformers/peft

Reads data (reviewgpt.data) and models (reviewgpt.models); eval never imports this package, and
env's doctor asks the planner (memory.py) how much GPU memory a recipe needs.
Each name is imported from the module that defines it (`from reviewgpt.train.loop import train`):
this package exports nothing itself, so importing it imports no torch.
"""
