"""The prediction log: each answered request goes to the registry's ``predictions`` table, off the hot path.

A request is one table row however many rows it predicted: its features, labels and probabilities are
stored column by column. ``records`` turns a PredictionRecord into a checked table row (and a spool
line), ``spool`` keeps rows in a bounded fsync'ed file while the database cannot take them, and
``writer`` holds the PredictionLog: the bounded queue, the writer thread that batches, retries and
replays, and the event its ``flush`` waits on. The server runs that PredictionLog in a process of its
own (``__main__``), off its GIL: ``process`` holds the PredictionLogProcess the data plane submits to
(its PredictionSink, ``modelyard.serving.sink``), and ``wire`` the frames between the two. The log never
migrates the database: ``modelyard db upgrade`` does, and until then the log spools.
"""

from modelyard.serving.prediction_log.writer import DatabaseState, PredictionLog
from modelyard.serving.sink import PredictionRecord

__all__ = ["DatabaseState", "PredictionLog", "PredictionRecord"]
