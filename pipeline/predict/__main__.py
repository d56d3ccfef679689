"""``python -m pipeline.predict``: the command line of :mod:`pipeline.predict.cli`."""

from pipeline.predict.cli import main

main()
