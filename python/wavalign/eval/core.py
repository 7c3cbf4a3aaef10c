"""Per-prompt scoring of a policy: the evaluator lives in wavalign.train.evaluator (the trainer
builds it too; eval/ sits above train/), re-exported here for the eval CLI and the ablation."""

from wavalign.train.evaluator import (EVAL_SEED, METRIC_LABELS, METRICS, PolicyEvaluator, build_evaluator,  # noqa: F401
                                      mean_summary, metric_digits, metric_label, metric_names)
