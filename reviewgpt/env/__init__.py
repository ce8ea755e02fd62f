"""The machine reviewgpt runs on, not the pipeline: the doctor's checks, and tiny local models for
tests and the quickstart. (What the installed torch can do is reviewgpt.torch_support, one level
up: models and train ask it, and env sits above them.)

    doctor.py         `reviewgpt doctor`: the checks, the report and its exit code
    probe.py          what the doctor looks at, once: versions, torch's CUDA build, driver, GPUs, imports
    gpu_checks.py     CUDA build vs driver and GPUs, bitsandbytes, flash-attn, GPU memory (asks reviewgpt.memory)
    tiny.py           `reviewgpt tiny-model`: a tiny random Gemma/Mistral/Llama and its tokenizer, built locally
"""
