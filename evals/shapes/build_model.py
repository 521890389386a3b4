"""Train the tiny shape classifier on synthetic images and export it as ``evals/shapes/model.onnx``.

Run from the repository root (CPU only, about a minute on 2 cores, deterministic for the fixed seeds):

    python -m evals.shapes.build_model

The script renders training and held-out images with :mod:`evals.shapes.data` (disjoint seeds),
preprocesses them with :func:`evals.shapes.preprocess.preprocess` -- the same function the eval uses at
serving time -- trains a small CNN, exports it with a dynamic batch dimension (input ``image``
N x 3 x 64 x 64 float32, output ``logits`` N x n_classes), re-checks the exported file with
onnxruntime and prints its held-out accuracy. The model file is only replaced when that accuracy
reaches ``--min-accuracy``.
"""

import argparse
import os
import sys
import tempfile
import time
import warnings

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from evals.shapes.data import CLASSES, HELD_OUT_SEED, TRAIN_SEED, make_dataset
from evals.shapes.preprocess import INPUT_SHAPE, preprocess_batch

#: Seeds weight initialisation, shuffling and augmentation.
TORCH_SEED = 0

DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "model.onnx")
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17


def _conv_block(in_channels, out_channels, stride):
    """3x3 conv + batch norm + ReLU. Batch norm folds into the conv at export, so it is free at inference."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ShapeNet(nn.Module):
    """A four-layer CNN: 64x64 -> 32 -> 16 -> 8 -> 4 with strided convs, global average pool, linear head.

    Strided convs instead of conv + max-pool keep the compute under 4 M multiply-adds per image, which
    is what makes single-image inference take a fraction of a millisecond on one CPU thread.
    """

    def __init__(self, n_classes):
        super().__init__()
        self.features = nn.Sequential(
            _conv_block(3, 16, 2),
            _conv_block(16, 32, 2),
            _conv_block(32, 64, 2),
            _conv_block(64, 96, 2),
        )
        self.head = nn.Linear(96, n_classes)

    def forward(self, image):
        features = self.features(image)
        return self.head(features.mean(dim=(2, 3)))


def _augment(batch, generator):
    """Random flips and 90-degree turns: every class is invariant to them, so they are free extra data."""
    if torch.rand((), generator=generator) < 0.5:
        batch = batch.flip(3)
    turns = int(torch.randint(0, 4, (), generator=generator))
    return torch.rot90(batch, turns, dims=(2, 3)) if turns else batch


def train(model, images, labels, epochs, batch_size, learning_rate, log_every=1):
    """Train ``model`` in place with AdamW and a one-cycle learning-rate schedule."""
    generator = torch.Generator().manual_seed(TORCH_SEED)
    n = len(images)
    steps_per_epoch = (n + batch_size - 1) // batch_size
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * steps_per_epoch, pct_start=0.25
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        total_loss = 0.0
        correct = 0
        for start in range(0, n, batch_size):
            index = order[start:start + batch_size]
            batch = _augment(images[index], generator)
            target = labels[index]
            logits = model(batch)
            loss = loss_fn(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += loss.item() * len(index)
            correct += int((logits.argmax(1) == target).sum())
        if (epoch + 1) % log_every == 0 or epoch + 1 == epochs:
            print(f"epoch {epoch + 1:2d}/{epochs}  loss {total_loss / n:.4f}  train acc {correct / n:.4f}",
                  flush=True)


def export_onnx(model, path):
    """Export with the legacy (TorchScript) exporter and a dynamic batch dimension; write atomically."""
    model.eval()
    dummy = torch.zeros((1,) + INPUT_SHAPE, dtype=torch.float32)
    directory = os.path.dirname(os.path.abspath(path))
    handle, tmp_path = tempfile.mkstemp(suffix=".onnx", dir=directory)
    os.close(handle)
    try:
        with warnings.catch_warnings():
            # The legacy exporter is chosen on purpose (stable, small graphs); silence its deprecation note.
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                model,
                (dummy,),
                tmp_path,
                dynamo=False,
                opset_version=OPSET,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                do_constant_folding=True,
            )
        # mkstemp makes the file private (0600); the shipped model is an ordinary readable file.
        os.chmod(tmp_path, 0o644)
        return tmp_path
    except BaseException:
        os.unlink(tmp_path)
        raise


def onnx_accuracy(path, batch, labels):
    """Held-out accuracy of the exported file itself, run through onnxruntime on the CPU."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    logits = np.concatenate([
        session.run([OUTPUT_NAME], {INPUT_NAME: batch[start:start + 256]})[0]
        for start in range(0, len(batch), 256)
    ])
    return float((logits.argmax(axis=1) == labels).mean())


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=DEFAULT_OUT, help="where to write the ONNX model")
    parser.add_argument("--train-size", type=int, default=6000, help="number of training images")
    parser.add_argument("--held-out-size", type=int, default=1000, help="number of held-out images")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=4e-3)
    parser.add_argument("--min-accuracy", type=float, default=0.97,
                        help="keep the old model file unless held-out accuracy reaches this")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    started = time.perf_counter()
    torch.manual_seed(TORCH_SEED)

    train_images, train_labels = make_dataset(args.train_size, TRAIN_SEED)
    held_out_images, held_out_labels = make_dataset(args.held_out_size, HELD_OUT_SEED)
    train_batch = torch.from_numpy(preprocess_batch(train_images))
    held_out_batch = preprocess_batch(held_out_images)
    print(f"rendered {args.train_size} training + {args.held_out_size} held-out images "
          f"in {time.perf_counter() - started:.1f} s", flush=True)

    model = ShapeNet(len(CLASSES))
    train(model, train_batch, torch.from_numpy(train_labels), args.epochs, args.batch_size, args.learning_rate)

    tmp_path = export_onnx(model, args.out)
    try:
        accuracy = onnx_accuracy(tmp_path, held_out_batch, held_out_labels)
        size_kb = os.path.getsize(tmp_path) / 1024
        print(f"held-out accuracy (onnxruntime, seed {HELD_OUT_SEED}, {args.held_out_size} images): "
              f"{accuracy:.4f}")
        print(f"model size: {size_kb:.1f} KiB; total time {time.perf_counter() - started:.1f} s")
        if accuracy < args.min_accuracy:
            print(f"accuracy below --min-accuracy {args.min_accuracy}; {args.out} left unchanged",
                  file=sys.stderr)
            return 1
        os.replace(tmp_path, args.out)
        print(f"wrote {args.out}")
        return 0
    finally:
        if os.path.exists(tmp_path):
            os.unlink(tmp_path)


if __name__ == "__main__":
    sys.exit(main())
