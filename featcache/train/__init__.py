"""Phase 3, training: the epoch loop, linear heads and probes, the end-to-end trainers, and DDP
with checkpoints."""
