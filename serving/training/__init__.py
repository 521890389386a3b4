"""Detector training built into the runtime: train, validate, checkpoint, export as a servable app.

- :mod:`serving.training.params`: :class:`~serving.training.params.TrainParams`, the validated parameters.
- :mod:`serving.training.detector_ops`: preprocessing and box decoding in numpy, shared by the trainer's
  evaluation and the exported app (copied next to its ``eval.py``), so both give the same detections.
- :mod:`serving.training.augment`: the dataset expansions (flips, rotate 90, blur) moving boxes with pixels.
- :mod:`serving.training.model`: the CenterNet-style detector and its ResNet / VGG style backbones.
- :mod:`serving.training.trainer`: :func:`~serving.training.trainer.train`, single process or DDP on CPU.
- :mod:`serving.training.export`: ONNX export and the generated app folder.
- :mod:`serving.training.recipe`: the command-line options, data splits and parameters of the training scripts.

Importing this package imports nothing heavy; torch is loaded by the modules that need it.
"""
