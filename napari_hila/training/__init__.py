"""Training: cross-validation splits, the trainer, the run folder and the final model's card.

Import the submodules directly (``training.splits``, ``training.trainer``,
``training.crossval``); the model file itself is :mod:`napari_hila.modelfile`.
"""
