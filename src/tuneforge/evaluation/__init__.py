"""Evaluation jobs' rules without torch: the dataset check and the built-in metrics (CreateEvaluationJob)."""
