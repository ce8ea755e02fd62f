"""The machine reviewgpt runs on, not the pipeline: the doctor's checks. (What the installed torch can
do is reviewgpt.torch_support, one level up: models and train ask it, and env sits above them; it asks
train's planner how much GPU memory a recipe needs.)

    doctor.py         `reviewgpt doctor`: the checks, the report and its exit code
    probe.py          what the doctor looks at, once: versions, torch's CUDA build, driver, GPUs, imports
    gpu_checks.py     CUDA build vs driver and GPUs, bitsandbytes, flash-attn, GPU memory (asks
                      reviewgpt.train.memory)
"""
