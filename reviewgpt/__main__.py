"""`python -m reviewgpt ...` (so `accelerate launch -m reviewgpt train ...` works)."""

from reviewgpt.cli import main

raise SystemExit(main())
