"""Use an exported model: the model folder the export stage writes, and predictions from it.

Owns the exported model folder (``spec``: ``model.json`` and the weights), the predictor
(``predictor``: :func:`load_predictor`, images in; decisions, calibrated probabilities, expected
costs and abstentions out), reading images and archives (``inputs``), abstention with a cost
guarantee by conformal risk control (``conformal``), building the export from a finished
pipeline (``export``) and the command line ``python -m pipeline.predict`` (``cli``, ``table``).

Never imports Ray or DVC: a predictor runs anywhere PyTorch does. The command line's Ray Data
path lives at the Ray edge, :mod:`pipeline.cluster.scoring`, imported only when asked for.
"""

from pipeline.predict.predictor import Predictions, Predictor, load_predictor
from pipeline.predict.spec import ExportedModel, ModelFolderError

__all__ = ["ExportedModel", "ModelFolderError", "Predictions", "Predictor", "load_predictor"]
