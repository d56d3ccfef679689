"""Training runs: what one run is and how it is carried out, on one process or many.

Owns a run's identity (``jobs``: its settings, inputs and code, hashed into the run's key), the
plain training loop and ``train_func`` (``train``), optimisers (``optim``), checkpoints and
finished outcomes (``checkpoints``), one trainer per run (``runlocks``), where a run reports to
(``sessions``: a plain process, a Tune trial or a Ray Train worker), the runs a configuration
asks for (``plan``) and the checks made before any run starts (``preflight``).

``train`` is ordinary PyTorch: it never imports Ray at module level (``sessions`` reaches Ray
only inside a Ray session), nor DVC, nor the report.
"""
