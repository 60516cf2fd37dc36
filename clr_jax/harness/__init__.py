"""The training harness: Flax NNX models, Caffe-style SGD, data on the device, runs with
checkpoints and exact resume, and sweeps of many schedules in one compiled program.

The pieces, each in its own module:

- `data`: image data sets as uint8 arrays (image folders, .tar.gz, tfds, the sample);
- `device_data`: the data set on the device, batches inside compiled code;
- `models`, `kernels`: the networks, and the CPU kernels and compiler options they use;
- `optim`: Caffe's SGD and the Optax optimizers by name, with per-layer multipliers;
- `train`: `TrainConfig`, the pure step functions, `Trainer` and `train`;
- `rundir`: a run's folder: its settings record, metrics and checkpoints;
- `loop`, `stopping`: the loop that fills it (metric writers, the progress bar) and
  stopping on Ctrl-C or SIGTERM with the last chunk saved;
- `members`, `sweep`: sweeps of many schedules at once;
- `jobs`: the range test of a harness model, and the demo;
- `commands`: the command line's ``range-test``, ``train``, ``sweep`` and ``demo``.

The entry points are `clr_jax.harness.train.train` and `clr_jax.harness.sweep.sweep`
(their modules share their names, so they are not re-exported here); the pieces they
are built from are.
"""

from clr_jax.harness.compilation import enable_compilation_cache
from clr_jax.harness.data import ImageDataset, load_dataset
from clr_jax.harness.device_data import DeviceData
from clr_jax.harness.members import Member, load_members, parse_members
from clr_jax.harness.models import build_model
from clr_jax.harness.rundir import RunDir, read_metrics
from clr_jax.harness.sweep import SweepTrainer
from clr_jax.harness.train import (
    TrainConfig,
    Trainer,
    TrainingError,
    fingerprint,
    make_eval_step,
    make_loss,
    train_steps,
)

__all__ = [
    "DeviceData",
    "ImageDataset",
    "Member",
    "RunDir",
    "SweepTrainer",
    "TrainConfig",
    "Trainer",
    "TrainingError",
    "build_model",
    "enable_compilation_cache",
    "fingerprint",
    "load_dataset",
    "load_members",
    "make_eval_step",
    "make_loss",
    "parse_members",
    "read_metrics",
    "train_steps",
]
