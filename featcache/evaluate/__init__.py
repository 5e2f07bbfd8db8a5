"""Phase 4, evaluation: run directories, statistics, the comparison, few-shot curves, plots and tables."""
