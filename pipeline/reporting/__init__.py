"""Evaluation and reporting: trained models' test predictions scored under every decision rule,
the recommendation, and what DVC tracks from them.

Owns the evaluation (``evaluation``: every figure from one confusion matrix per run), the
recommendation (``recommendation``), the files it writes (``outputs``), the figures
(``figures``) and the Markdown report (``report``). Never trains, never imports Ray.
"""
