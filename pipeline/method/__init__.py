"""The method and its peers: what the paper defines, as pure functions and small objects.

Owns the cost matrix (``costs``, and its files in ``costfiles``), Algorithm 1's targeted attack
(``attacks``, with ``fusion`` for folding BatchNorm while it runs), the training objectives
(``csada``: objective (5), Algorithms 2 and 3; ``losses``: ERM, the penalty (3), AP, SOSR;
``peers``: soft labels and the logit-adjusted loss; ``registry``: a method by name), the metrics
read off one confusion matrix (``metrics``), the decision rules (``decision``) and temperature
scaling (``calibration``).

Tensors in, tensors out. Never imports Ray, DVC, the data layer (:mod:`pipeline.datasets`) or
the runs: a unit test runs all of it on a 3-class toy model in milliseconds.
"""
