"""Training: `args` (the train section as TRL's SFTConfig), `trainer` (the SFTTrainer, a CPU loss at trained
positions), `loop` (train, resume, the run's metrics), `callbacks` (memory, NaN), `tracking`, `distributed`,
`outputs` (loss curve, environment)."""
