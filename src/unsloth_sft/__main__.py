"""`python -m unsloth_sft ...`, so `accelerate launch -m unsloth_sft train ...` works."""

from unsloth_sft.app.cli import main

raise SystemExit(main())
