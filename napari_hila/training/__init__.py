"""Training: cross-validation splits, the trainer and the model file.

Import the submodules directly (``training.splits``, ``training.trainer``,
``training.modelfile``).
"""
