"""The one base of every error a user can cause and fix (bad params, files or data).

Each module raises its own subclass (``ConfigError``, ``DatasetError``, ``CostMatrixError``,
``CheckpointError``, ...) with a message that names the offending value and what would be
valid. A stage catches :class:`UserError` once (:func:`pipeline.stage.run_stage`) and prints that
message as one line; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Input that cannot be used as given; the message says what to change."""
