"""The paper's experiments (section 4's proof of concept and section 5), as the ``paper/``
pipeline runs them: their settings (``config``), the runs each experiment makes
(``experiments``), its figures (``figures``), the toy problem (``proof_of_concept``) and the
claims page (``claims``).

Built on the product's parts (method, models, runs, cluster, reporting); nothing outside this
part imports it.
"""
