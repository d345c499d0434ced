"""Evaluation and inference: `generate` (batched, the run's stop tokens), `loss` (eval loss at trained positions),
`evaluate` (base against tuned on the test split), `infer` (answers for new inputs), `report` (the eval folder and
the lines that end a run)."""
