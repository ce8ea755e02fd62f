#!/bin/sh
# Entrypoint of the reviewgpt images: the first argument picks what runs.
#   train-gemma ... / train-mistral ...     the recipe aliases
#   reviewgpt SUB ... / SUB ...             any reviewgpt subcommand (doctor, train, review, ...)
#   bash / sh / python / accelerate / deepspeed ...   a shell or a launcher (several GPUs)
set -e
case "${1:-}" in
    "") exec reviewgpt --help ;;
    train-gemma | train-mistral | reviewgpt | bash | sh | python | python3 | accelerate | deepspeed | nvidia-smi)
        exec "$@" ;;
    *) exec reviewgpt "$@" ;;
esac
