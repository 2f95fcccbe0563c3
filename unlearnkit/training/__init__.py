"""Training: the loop (:mod:`.loop`), its batches, reference model, checkpoints, run folder and records."""
