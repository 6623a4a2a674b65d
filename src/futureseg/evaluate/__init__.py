"""Stage 6, evaluation: IoU scores of every route, the submission file and its check,
gathering of shards and of ablation scores, the report's figures."""
