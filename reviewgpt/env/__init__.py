"""The machine reviewgpt runs on, not the pipeline: what the installed torch can do, the doctor's
checks, and tiny local models for tests and the quickstart.

    torch_support.py  one table of what a torch release lacks; the code asks it (imported by models, train)
    doctor.py         `reviewgpt doctor`: versions, CUDA, bitsandbytes, flash-attn, GPU memory (asks train.plan)
    tiny.py           `reviewgpt tiny-model`: a tiny random Gemma/Mistral/Llama and its tokenizer, built locally
"""
