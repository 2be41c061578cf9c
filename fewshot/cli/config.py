"""Command-line flags shared by every experiment script (data, tasks, schedule, run folder).

Algorithm-specific flags live in the script of their algorithm. Simple range
checks are absl validators, so a bad value fails at start-up with one line
naming the flag.
"""

import os

from absl import flags

from fewshot import datasets

# Seeds go to NumPy, Python's random and TensorFlow's stateless generators: all take these.
MAX_SEED = 2 ** 31 - 1

# Data --------------------------------------------------------------------------
flags.DEFINE_string('data_dir', os.environ.get('OMNIGLOT_DIR', ''),
                    'Folder with the original Omniglot archives images_background.zip and '
                    'images_evaluation.zip (or their extracted folders). Defaults to $OMNIGLOT_DIR; '
                    'if both are empty, Omniglot is downloaded with tensorflow-datasets.')
flags.DEFINE_string('cache_dir', 'data', 'Where preprocessed arrays (and tfds downloads) are cached.')
flags.DEFINE_enum('split', 'random', ['random', 'lake'],
                  "Character split: 'random' shuffles all 1623 characters into "
                  "--num_train_classes / --num_val_classes / rest for test; 'lake' trains on Lake's "
                  'background set and splits the evaluation set into validation and test.')
flags.DEFINE_integer('num_train_classes', 1100, "Meta-train characters (split 'random').", lower_bound=1)
flags.DEFINE_integer('num_val_classes', 100, 'Meta-validation characters.', lower_bound=1)
flags.DEFINE_integer('split_seed', 1, 'Seed of the character split (kept apart from --seed so '
                     'that runs with different seeds share one split).', lower_bound=0, upper_bound=MAX_SEED)
flags.DEFINE_boolean('rotations', False, 'Add 90/180/270-degree rotations of the meta-train '
                     'characters as new classes (fixed; see --task_rotations for the MAML code\'s augmentation).')
flags.DEFINE_enum('task_rotations', 'none', ['none', 'train', 'all'],
                  'Show each class of a task under a random multiple of 90 degrees, the same for all its '
                  "images, support and query, drawn anew per task: in meta-training tasks only ('train', as "
                  "MAML++'s code does) or in meta-training, validation and test tasks ('all', as the MAML "
                  "paper's code does).")
flags.DEFINE_enum('task_rotations_per', 'class', ['class', 'task'],
                  "With --task_rotations: draw the quarter turn for each class of a task ('class', as the MAML "
                  "codes do) or one for all the classes of a task ('task', as the Relation Network code does).")
flags.register_multi_flags_validator(
    ['task_rotations', 'task_rotations_per'],
    lambda values: values['task_rotations_per'] == 'class' or values['task_rotations'] != 'none',
    message='--task_rotations_per task: says how --task_rotations turns a task; give --task_rotations train or all')

NAMED_DATASETS = datasets.NAMES  # Their files: docs/datasets.md.
flags.DEFINE_string('dataset', 'omniglot', "The classes tasks are drawn from: 'omniglot'; a named dataset with its "
                    f"standard class split ({', '.join(NAMED_DATASETS)}: its files in --dataset_dir, see "
                    "docs/datasets.md; mnist, fashion_mnist and animal_mnist are all meta-test, for --test_dataset); "
                    "or 'folder:PATH', a folder with a subfolder of images per class (any size and format, resized "
                    'to --image_size, grayscale or RGB by --channels; every class needs --k_shot + --num_query '
                    'images), its classes split at random with --split_seed into --num_train_classes, '
                    '--num_val_classes and the rest for test.')
flags.register_validator(
    'dataset', lambda value: value in ('omniglot', *NAMED_DATASETS) or (value.startswith('folder:') and len(value) > 7),
    message=f"--dataset: 'omniglot', one of {', '.join(NAMED_DATASETS)}, or 'folder:PATH' (a folder with a subfolder "
            'of images per class)')
flags.DEFINE_string('dataset_dir', '', "The folder holding a named --dataset's (and --test_dataset's) files as "
                    'docs/datasets.md lists them (default: its environment variable, e.g. MINI_IMAGENET_DIR, '
                    'MNIST_DIR; cifar_fs, fc100 and cub without either are read through tensorflow-datasets).')
flags.DEFINE_list('test_dataset', [], 'Meta-test (after training, or on --resume of a finished run) on these named '
                  "datasets' meta-test classes too: cross-domain meta-testing, e.g. a run trained on Omniglot "
                  "tested on mnist,fashion_mnist,animal_mnist (their images must have the training images' shape). "
                  'Each is written to meta_test_<dataset>_<N>way<K>shot.json beside summary.json.')
flags.DEFINE_string('test_dataset_dir', '', "The folder holding --test_dataset's files, for one dataset (default: each "
                    "one's environment variable, e.g. MNIST_DIR, FASHION_MNIST_DIR, ANIMAL_MNIST_DIR).")
flags.register_validator('test_dataset',
                         lambda value: set(value) <= set(NAMED_DATASETS) and len(set(value)) == len(value),
                         message=f"--test_dataset: a list of distinct names among {', '.join(NAMED_DATASETS)}")
flags.register_validator('test_dataset_dir', lambda value: not value or len(flags.FLAGS.test_dataset) == 1,
                         message='--test_dataset_dir: the folder of one --test_dataset (with several, set each '
                                 "one's environment variable)")
flags.DEFINE_integer('test_n_way', 0, 'With --test_dataset: classes per test task (0: --n_way); another N than '
                     "training's only for learners without a head of N outputs (ProtoNet, Relation Networks).",
                     lower_bound=0)
flags.DEFINE_integer('test_k_shot', 0, 'With --test_dataset: support examples per class of a test task (0: --k_shot).',
                     lower_bound=0)
flags.DEFINE_integer('test_num_query', 0, 'With --test_dataset: query examples per class of a test task (0: '
                     '--num_query; cross_domain.py gives 15, so that runs of different protocols meet the same tasks).',
                     lower_bound=0)
flags.register_multi_flags_validator(
    ['test_dataset', 'test_n_way', 'test_k_shot', 'test_num_query'],
    lambda values: values['test_dataset'] or not (values['test_n_way'] or values['test_k_shot']
                                                  or values['test_num_query']),
    message='--test_n_way, --test_k_shot, --test_num_query: the task shape of --test_dataset\'s meta-test; give '
            '--test_dataset')
flags.DEFINE_integer('image_size', 28, '--dataset folder:PATH: images are resized to this many pixels square '
                     "(Omniglot's are 28; a named dataset's, its own).", lower_bound=4)
flags.DEFINE_integer('channels', 1, '--dataset folder:PATH: 1 (grayscale, as Omniglot) or 3 (RGB).',
                     lower_bound=1, upper_bound=3)
flags.register_validator('channels', lambda value: value in (1, 3), message='--channels: 1 (grayscale) or 3 (RGB)')
flags.register_multi_flags_validator(
    ['dataset', 'image_size', 'channels'],
    lambda values: values['dataset'].startswith('folder:') or (values['image_size'] == 28 and values['channels'] == 1),
    message='--image_size, --channels: only with --dataset folder:PATH (Omniglot is 28x28 grayscale, a named '
            'dataset has its own size)')
flags.register_multi_flags_validator(
    ['dataset', 'split', 'rotations', 'task_rotations'],
    lambda values: values['dataset'] == 'omniglot' or (values['split'] == 'random' and not values['rotations']
                                                       and values['task_rotations'] == 'none'),
    message="--split lake, --rotations, --task_rotations: Omniglot's only; another --dataset has its own split "
            '(a folder: at random), unrotated')

# Tasks -------------------------------------------------------------------------
flags.DEFINE_integer('n_way', 5, 'Classes per task (N).', lower_bound=2)
flags.DEFINE_integer('k_shot', 5, 'Support examples per class (K).', lower_bound=1)
flags.DEFINE_integer('num_query', 15, 'Query examples per class (Q).', lower_bound=1)
flags.DEFINE_integer('meta_batch_size', 32, 'Tasks per meta-iteration (T).', lower_bound=1)
flags.DEFINE_integer('tasks_per_chunk', None, 'Meta-learners: compute the meta-gradient over this many tasks at a '
                     'time and average (the same meta-step in less memory; default: 8 for second order and '
                     'MAML++, measured faster and in half the memory, else the whole meta-batch at once).',
                     lower_bound=1)
flags.DEFINE_float('memory_budget_gb', 0, 'Meta-learners: choose --tasks_per_chunk so that a meta-step stays within '
                   'this much memory (GB, the whole process), from the memory a few tasks measure at the start '
                   '(0: no budget).', lower_bound=0)
flags.register_multi_flags_validator(
    ['tasks_per_chunk', 'memory_budget_gb'],
    lambda values: not (values['tasks_per_chunk'] and values['memory_budget_gb']),
    message='--tasks_per_chunk and --memory_budget_gb: give one of them (the budget chooses the chunk)')
flags.register_multi_flags_validator(
    ['tasks_per_chunk', 'meta_batch_size'],
    lambda values: values['tasks_per_chunk'] is None or values['tasks_per_chunk'] <= values['meta_batch_size'],
    message='--tasks_per_chunk: at most --meta_batch_size (the tasks of one meta-iteration)')

# Network -----------------------------------------------------------------------
flags.DEFINE_integer('num_filters', 64, 'Filters in each convolution block.', lower_bound=1)
flags.DEFINE_boolean('max_pool', False, 'Stride-1 convolutions with 2x2 max-pooling instead of '
                     'stride-2 convolutions (the MAML paper uses strides for Omniglot).')
flags.DEFINE_enum('precision', 'float32', ['float32', 'bfloat16'],
                  "The network's convolutions in float32, or in bfloat16 (mixed precision: weights, batch-norm "
                  'moments, losses, inner-loop updates and the meta-optimizer stay float32). bfloat16 is fast '
                  'only on CPUs with native bfloat16 arithmetic (avx512_bf16 or AMX; python benchmark.py shows it).')

# Schedule ----------------------------------------------------------------------
flags.DEFINE_integer('num_iterations', 1000, 'Meta-training iterations.', lower_bound=0)
flags.DEFINE_float('time_budget_minutes', 0, 'Stop meta-training at the first validation after this many '
                   'minutes of it (0: no limit); --num_iterations is then the most it trains. compare.py '
                   '--budget_minutes sets it to compare methods at equal wall-clock time.', lower_bound=0)
flags.DEFINE_integer('val_interval', 50, 'Validate, log and checkpoint every this many iterations.',
                     lower_bound=1)
flags.DEFINE_float('keep_checkpoint_at', None, 'Keep a copy of the checkpoint of the first validation whose '
                   'post-adaptation accuracy reaches this fraction (e.g. a paper\'s number, 0.987), '
                   'checkpoint_reached.npz, with reached.json saying when: how soon the run got there, to '
                   'meta-test later (reference.py --continue gives the paper\'s number). Default: none kept.',
                   lower_bound=0)
flags.DEFINE_integer('num_val_tasks', 160, 'Fixed meta-validation tasks per validation (at least 2: the 95% '
                     'confidence interval needs two).', lower_bound=2)
flags.DEFINE_integer('num_test_tasks', 600, 'Meta-test tasks for the final evaluation (at least 2: the 95% '
                     'confidence interval needs two).', lower_bound=2)
flags.DEFINE_integer('eval_seed', 2024, 'Seed of the fixed validation and test tasks (shared by '
                     'all scripts, so every method is scored on the same tasks).', lower_bound=0,
                     upper_bound=MAX_SEED - 1)  # The test tasks use --eval_seed + 1.
flags.DEFINE_integer('seed', 0, 'Seed of the initial weights and of the meta-training task stream.',
                     lower_bound=0, upper_bound=MAX_SEED)

# Run folder --------------------------------------------------------------------
flags.DEFINE_string('results_dir', 'results', 'Where run folders are written.')
flags.DEFINE_string('run_name', '', 'Run folder name under --results_dir: one folder name, no / '
                    '(default: derived from the algorithm and the main flags).')
flags.DEFINE_boolean('resume', False, 'Continue the run in --run_name from its last checkpoint.')
flags.DEFINE_boolean('overwrite', False, 'Delete an existing run folder of the same name first (only '
                     'a run folder this project wrote; anything else is left alone).')
flags.DEFINE_boolean('progress', True, 'Show a progress bar.')
flags.DEFINE_boolean('check_reuse', False, 'With --resume: only check that the run folder was made by this command '
                     'with these flags (every flag that changes what is computed), print one line and exit; '
                     'compare.py and stability.py ask this before they reuse a finished run.')

FLAGS = flags.FLAGS


def flag_values(modules, attribute='value'):
    """The values of the key flags of `modules` (module objects) by name: the flags each
    defines, adopts or declares as its own, as listed by --help. attribute='default': their defaults."""
    names = set()
    for module in modules:
        names.update(flag.name for flag in FLAGS.get_key_flags_for_module(module))
    return {name: getattr(FLAGS[name], attribute) for name in sorted(names)}
