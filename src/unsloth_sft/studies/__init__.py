"""Studies: one recipe, many variants. `spec` (the sweep section and variant names), `trials` (one variant in a
child process), `sweep` (a grid), `search` (Optuna), `variant` (the child process), `compare` (a leaderboard)."""
