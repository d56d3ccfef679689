"""The Ray edge: where runs meet a cluster, and the search that runs on it.

Owns running a list of runs as one Ray Tune sweep of Ray Train runs (``distributed``), the
validation search (``search``: Optuna's TPE, a method's trials one at a time, the methods side
by side as Ray tasks) and its early stopping (``halving``: successive halving decided in trial
order), batch scoring of an exported model with Ray Data (``scoring``, the Ray path of
``python -m pipeline.predict``), the console's progress lines (``progress``) and the line a node
that left the cluster gets (``nodes``), S3 run storage and DVC remotes (``remote``), one trainer
per run folder on S3 (``leases``), and stopping a stage's processes when its ``dvc`` dies
(``lifeline``).

Ray is imported here, and inside functions where a stage may never need it. Never imported by
the method, the models or the data layer.
"""
