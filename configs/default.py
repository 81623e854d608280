"""Every knob of a localsgd-jax run, with its default.

Other configs import this one and override a few fields. Any field can be set
from the command line, e.g.
  python train.py --config=configs/default.py --config.model.name=resnet20 \
      --config.selection.mode=static --workdir=/tmp/run
The config is locked: a misspelt field is an error.
"""
import ml_collections


def at_least(minimum: int, value):
  """max(minimum, value) for an int or a lazy FieldReference expression.

  ml_collections has no lazy max; e.g. `at_least(1, ref * 3 // 5)` keeps
  one SGD warm-up epoch when a 1-epoch run is asked for on the command line.
  """
  return (value + minimum + abs(value - minimum)) // 2


def static_after_sgd(config: ml_collections.ConfigDict) -> None:
  """The project's static schedule: plain SGD for the first 60% of the
  epochs (following --config.num_epochs; at least one, so a 1-epoch smoke
  run stays SGD rather than going local from random weights), then one
  step to k_max. The configs set k_max or selection.k_max_flop_share."""
  config.selection.mode = 'static'
  config.selection.warmup_epochs = at_least(
      1, config.get_ref('num_epochs') * 3 // 5)
  config.selection.ramp = 'step'


def per_batch_lr(config: ml_collections.ConfigDict, lr: float,
                 batch: int):
  """A learning rate `lr` at batch `batch`, scaled with config.batch_size.

  A lazy reference: `--config.batch_size=16` on the command line scales the
  rate linearly (the linear scaling rule), while an explicit
  `--config.optim.learning_rate=...` still replaces it. At each shipped
  config's own batch size the rate is the exact float of the constant
  (tests/test_configs.py).
  """
  return config.get_ref('batch_size').to_float() * (lr / batch)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0                 # Parameter init, data order, augmentation.
  config.num_epochs = 10
  # The share of the last epoch's steps that run (rounded to a step): 0.6
  # with num_epochs=13 trains 12.6 epochs, the schedule compressed into them
  # (compare.py's SGD budgets and sgd_same_time match costs in steps).
  config.last_epoch_fraction = 1.0
  config.batch_size = 128         # Global batch, split over all devices.
  config.eval_batch_size = 500
  config.dtype = 'float32'        # Compute dtype: float32 or bfloat16.
  config.eval_every_epochs = 1    # Evaluate every N epochs (and the last).
  # Test-time augmentation, reported apart (eval_accuracy_tta) from the
  # plain eval_accuracy: none, flip (mean logits of the image and its
  # mirror) or flip_shift (airbench's: also 1-px diagonal shifts). Needs
  # flips in training: refused for digits or data.augment=False.
  config.eval_tta = 'none'
  # JAX's persistent compilation cache, shared by every run on this machine
  # (a comparison compiles each program once); '' turns it off.
  config.compile_cache_dir = '~/.cache/localsgd_jax/xla'
  # A workdir holds one run (README, "Outputs"): rerunning resumes it, and a
  # config that would change its result is refused, unless these fields
  # (comma-separated, e.g. 'num_epochs') are named here on purpose; the
  # change is recorded in WORKDIR/run.json.
  config.resume_allow = ''
  # Fork: start a new workdir from another run's checkpoint, 'WORKDIR:EPOCH'
  # (or 'WORKDIR' for its latest); '{seed}' in WORKDIR becomes the seed.
  # The parent and the epoch are recorded in run.json and summary.json.
  config.init_from = ''

  config.model = ml_collections.ConfigDict()
  config.model.name = 'tiny'      # See localsgd_jax.models.MODELS.
  config.model.cifar_stem = True  # 3x3 stride-1 stem for 32x32 inputs.
  # he_fan_out (torchvision's) or torch_default (PyTorch's layer defaults):
  # localsgd_jax/models/base.py.
  config.model.init = 'he_fan_out'

  config.data = ml_collections.ConfigDict()
  config.data.name = 'digits'     # digits, cifar10, cifar100, imagenet2012,
                                  # image_folder.
  config.data.dir = ''            # Local CIFAR python folder or image folder;
                                  # '' reads cifar through tfds.
  config.data.tfds_data_dir = ''  # '' = tfds default (~/tensorflow_datasets).
  config.data.image_size = 32     # Digits are upsampled to this; streaming
                                  # datasets are cropped to it.
  config.data.augment = True      # False: no crop, flip or cutout ('none').
  # The training crop (then a flip where the data allows): auto (pad_crop
  # for images of at most 64 px a side, random_resized_crop above),
  # pad_crop (CIFAR: reflect-pad by crop_padding, crop back),
  # random_resized_crop (ImageNet: a box of rrc_scale of the area, aspect
  # 3/4..4/3, resized to train_size), or none.
  config.data.augmentation = 'auto'
  config.data.crop_padding = 4    # pad_crop: pixels of padding per side.
  config.data.rrc_scale = (0.35, 1.0)  # random_resized_crop: (min, max)
                                  # area fractions (Imagenette's 0.35;
                                  # ImageNet's configs use 0.08).
  config.data.train_size = 0      # Side of the square training and eval
                                  # images (eval: whole image resized);
                                  # 0 = the images' own size. Streaming: 0 =
                                  # image_size.
  config.data.cutout = 0          # Side of a square set to the mean pixel
                                  # (0 after normalizing, as airbench) in
                                  # each training image; 0 = off.
  config.data.shuffle_buffer = 10_000  # Streaming datasets only.
  config.data.storage = 'auto'    # image_folder: memory (decode once, cache,
                                  # hold in memory), stream (tf.data), or auto.
  config.data.max_memory_gb = 4.0  # auto: memory if its uint8 pixels fit (GB).
  config.data.cache_dir = ''      # Where decoded image folders are cached;
                                  # '' = ~/.cache/localsgd_jax (XDG-aware).
  config.data.train_per_class = 0  # In-memory data: keep the first N training
                                  # images of each class; 0 = all.
  config.data.holdout_per_class = 0  # Evaluate on N held-out training images
                                  # per class instead of the test split.
  config.data.holdout_seed = 0    # Which images the hold-out draws.

  config.optim = ml_collections.ConfigDict()
  config.optim.name = 'sgd'       # sgd (momentum) or adamw.
  # Peak learning rate (of the mean loss): 0.1 at batch 128, following
  # --config.batch_size linearly unless set itself (per_batch_lr).
  config.optim.learning_rate = per_batch_lr(config, 0.1, 128)
  config.optim.schedule = 'cosine'  # cosine, step, constant or triangular.
  config.optim.warmup_epochs = 0.0  # Not with triangular (its own ramp).
  # triangular: linear from triangular_start x the peak at step 0 up to the
  # peak at peak_fraction of the run's steps, then linear down to
  # triangular_end x the peak at the end (the fast-CIFAR ResNet-18 recipe:
  # 0.2, 0.2, 0; see optim.triangular_schedule).
  config.optim.peak_fraction = 0.2
  config.optim.triangular_start = 0.2
  config.optim.triangular_end = 0.0
  config.optim.step_boundaries = (0.5, 0.75)  # Fractions of training (step).
  config.optim.step_decay = 0.1
  config.optim.momentum = 0.9
  config.optim.nesterov = True
  config.optim.weight_decay = 5e-4
  # False: weight decay on conv/dense kernels only, not on BatchNorm scales
  # and biases nor on layer biases (optim.kernels_mask); True decays all.
  config.optim.decay_norm_and_bias = True
  config.optim.b1 = 0.9           # adamw only.
  config.optim.b2 = 0.999         # adamw only.
  config.optim.label_smoothing = 0.0
  # > 0: keep an exponential moving average of the weights and BatchNorm
  # statistics (decay warmed up over the first steps, train_step.ema_update)
  # and evaluate it instead of the trained weights. Fixed within a run.
  config.optim.ema_decay = 0.0

  # The local (Hebbian) rule applied to units before the transition index.
  config.local = ml_collections.ConfigDict()
  config.local.rule = 'oja'       # oja, gha, hebb, or frozen (forward only,
                                  # learning rate 0: the FreezeOut peer).
                                  # Why oja: benchmarks/RESULTS.md.
  config.local.activity = 'bn'    # Post-synaptic activity: conv, bn, bn_relu.
  config.local.learning_rate = 1e-4
  config.local.normalize = True   # Keep each filter's norm through updates.
  config.local.follow_sgd_schedule = True  # Scale by lr(t) / peak SGD lr.
  # The Hebbian GEMM on every 4th example, every 4th step (local lr x 4;
  # the other steps only run local units forward): the same accuracy as
  # every example at every step in benchmarks/RESULTS.md, and on XLA:CPU,
  # where the Hebbian contraction is slow, a local epoch ~4x cheaper.
  config.local.hebbian_fraction = 0.25  # 1/m of the batch (1.0 = all).
  config.local.hebbian_every = 4  # Hebbian step every m-th step (1 = all).
  config.local.weak_supervision = 'scale'  # none, scale or sign.
  config.local.ws_power = 1.0     # 'scale': min(1, ema/loss) ** power.
  config.local.loss_ema_decay = 0.98  # Running average of the training loss.

  # Learning mode selection: which transition index each epoch uses.
  config.selection = ml_collections.ConfigDict()
  config.selection.mode = 'sgd'   # sgd, static, dynamic, gradnorm.
  config.selection.k_max = -1     # Largest transition index; -1 = all units
                                  # but the head (or by k_max_flop_share).
  config.selection.k_max_flop_share = 0.0  # > 0: k_max is the most units
                                  # from the input holding at most this share
                                  # of the forward FLOPs (needs k_max=-1).
  config.selection.warmup_epochs = 1  # Epochs of pure SGD first.
  config.selection.ramp = 'linear'  # static: linear, cosine, cubic, step.
  config.selection.ramp_epochs = -1  # Epochs to reach k_max; -1 = until the
                                     # last epoch.
  config.selection.table = ''     # static: explicit 'epoch:k,epoch:k' table.
  # dynamic / gradnorm (see localsgd_jax/selection.py):
  config.selection.statistic = 'consistency'  # dynamic: consistency (net
                                  # change / path of the period's updates) or
                                  # update_per_lr (see selection.py).
  config.selection.settle_fraction = 0.5  # dynamic: a unit has settled when
                                  # its statistic is <= this x its peak.
  config.selection.gradnorm_threshold = 0.1  # gradnorm: settled when its grad
                                  # norm changed <= 10% over the last epoch.
  config.selection.max_advance = 2  # Units the boundary may move at once.
  config.selection.min_hold_epochs = 1.0  # Epochs to train at a new
                                  # boundary before it may move again.
  config.selection.every_steps = 0  # dynamic / gradnorm: also decide every
                                  # this many steps within an epoch (for
                                  # short schedules); 0 = between epochs.
  config.selection.retreat = True  # dynamic: step back if the loss rises...
  config.selection.retreat_tolerance = 0.05  # ...by more than 5%.

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_epochs = 1
  config.checkpoint.keep = 2

  config.log = ml_collections.ConfigDict()
  config.log.progress = True      # Progress bar on a terminal.
  config.log.tensorboard = True   # Event files in WORKDIR/tb.
  config.log.loss_every_steps = 10  # TensorBoard train/loss: every N steps.
  config.log.check_finite_every = 50  # Steps between NaN/inf loss checks.
  return config
