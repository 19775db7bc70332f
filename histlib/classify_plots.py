"""The plots of classifier runs (:mod:`histlib.classify.plots`) under the name notebook 05 imports.

The notebook's source is part of its study steps' hashes, so its import line stays as it is.
"""

from histlib.classify.plots import plot_confusion_matrices, plot_confusion_matrix, plot_learning_curves  # noqa: F401
