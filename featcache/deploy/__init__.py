"""Phase 5, deployment: export a run as one torch.export file, and predict with it."""
