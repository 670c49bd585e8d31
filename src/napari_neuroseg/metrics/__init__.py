"""FISBe metrics (FlyLight preset of the official evaluator): exact, sparse and per instance.

Qt-free. ``evaluate(gt, pred, partly=False)`` for one sample, ``evaluate_iter`` as a progress
generator, ``aggregate(results, partly_flags)`` for the leaderboard numbers of a set.
"""

from .evaluate import FM_THRESH, FS_THRESH, MIN_SIZE, THRESHOLDS, evaluate, evaluate_iter

__all__ = ["evaluate", "evaluate_iter", "THRESHOLDS", "MIN_SIZE", "FM_THRESH", "FS_THRESH"]
