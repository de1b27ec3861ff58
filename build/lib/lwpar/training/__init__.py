"""Training: the loop (`loop`: `train_one_epoch`, `validate`, `fit` with resume), its checkpoint and
settings fingerprint (`checkpoint`), losses, schedules, BatchNorm re-estimation, and the two jobs
built on them: training a baseline (`baseline`) and fine-tuning a compressed model or a control
(`finetune`). Imports nothing from compression or deployment."""
