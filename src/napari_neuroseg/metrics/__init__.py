"""FISBe metrics (FlyLight preset of the official evaluator): exact, sparse and per instance.

Qt-free. ``evaluate(gt, pred, partly=False)`` for one sample, ``evaluate_iter`` as a progress
generator, ``aggregate(results, partly_flags)`` for the leaderboard numbers of a set.
"""

from .aggregate import aggregate, combine_sets, summarize_set
from .evaluate import FM_THRESH, FS_THRESH, MIN_SIZE, THRESHOLDS, evaluate, evaluate_iter
from .report import format_table, to_toml, write_csv, write_json, write_toml

__all__ = [
    "evaluate", "evaluate_iter", "aggregate", "summarize_set", "combine_sets",
    "to_toml", "write_toml", "write_json", "write_csv", "format_table",
    "THRESHOLDS", "MIN_SIZE", "FM_THRESH", "FS_THRESH",
]
