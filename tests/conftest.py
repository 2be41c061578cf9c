"""Shared fixtures: synthetic Omniglot archives in the original layout, and the real data if present."""

import io
import os
import socket
import sys
import time
import zipfile

import numpy as np
import pytest
from PIL import Image, ImageDraw

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
import fewshot  # noqa: E402,F401 (before any test imports TensorFlow: it sets up TensorFlow's CPU backend)

# archive -> {alphabet: number of characters}; 20 drawings each, as in Omniglot.
SYNTHETIC_LAYOUT = {
    'images_background': {'Alpha': 6, 'Beta_(script)': 5},
    'images_evaluation': {'Gamma': 4, 'Delta': 5},
}


def _drawing(rng):
    """A 105x105 1-bit image of a few random black strokes on white, like an Omniglot PNG."""
    image = Image.new('1', (105, 105), 1)
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 5)):
        points = [tuple(int(v) for v in rng.integers(10, 95, size=2)) for _ in range(3)]
        draw.line(points, fill=0, width=int(rng.integers(3, 7)))
    return image


def write_synthetic_archives(folder, layout=SYNTHETIC_LAYOUT, seed=0, zipped=True):
    """Writes archives (or extracted folders) in Omniglot's layout; returns the folder."""
    rng = np.random.default_rng(seed)
    os.makedirs(str(folder), exist_ok=True)
    character_id = 0
    for archive, alphabets in layout.items():
        members = {}
        for alphabet, count in sorted(alphabets.items()):
            for number in range(1, count + 1):
                character_id += 1
                for drawer in range(1, 21):
                    name = f'{archive}/{alphabet}/character{number:02d}/{character_id:04d}_{drawer:02d}.png'
                    png = io.BytesIO()
                    _drawing(rng).save(png, format='PNG')
                    members[name] = png.getvalue()
        if zipped:
            with zipfile.ZipFile(os.path.join(str(folder), archive + '.zip'), 'w') as zf:
                for name, png in members.items():
                    zf.writestr(name, png)
        else:
            for name, png in members.items():
                path = os.path.join(str(folder), name)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, 'wb') as f:
                    f.write(png)
    return str(folder)


@pytest.fixture(scope='session')
def synthetic_dir(tmp_path_factory):
    """A folder with synthetic images_background.zip and images_evaluation.zip (20 characters)."""
    return write_synthetic_archives(tmp_path_factory.mktemp('omniglot'))


def shared_data_dir(variable):
    """The real data folder named by environment `variable`. CI sets it, and there the tests that
    need it must run: a missing variable fails in CI and skips elsewhere."""
    folder = os.environ.get(variable, '')
    if not folder:
        if os.environ.get('CI'):
            pytest.fail(f'{variable} is not set in CI; the real-data tests must run there')
        pytest.skip(f'{variable} is not set (the real-data tests run in CI)')
    return folder


@pytest.fixture(scope='session')
def real_omniglot_dir():
    """The real Omniglot archives from $OMNIGLOT_DIR."""
    return shared_data_dir('OMNIGLOT_DIR')


@pytest.fixture(scope='session')
def mnist_dir():
    """The original MNIST IDX files from $MNIST_DIR."""
    return shared_data_dir('MNIST_DIR')


@pytest.fixture(scope='session')
def real_omniglot(real_omniglot_dir, tmp_path_factory):
    from fewshot import data
    # The project's own cache folder: built once, shared with the scripts (and git-ignored).
    cache = os.environ.get('OMNIGLOT_TEST_CACHE') or os.path.join(REPO, 'data')
    return data.load_omniglot(real_omniglot_dir, cache)


def wait_for_checkpoint(process, checkpoint, iteration, timeout=240):
    """Waits until the run of `process` has checkpointed `iteration` or later in the file `checkpoint`,
    or has ended, or `timeout` seconds have passed (the caller checks which)."""
    deadline = time.time() + timeout
    while time.time() < deadline and process.poll() is None:
        try:
            with np.load(checkpoint) as saved:
                if int(saved['iteration']) >= iteration:
                    return
        except (OSError, ValueError, KeyError, EOFError):  # Not written yet, or being replaced.
            pass
        time.sleep(0.05)


def free_ports(count):
    """`count` TCP ports free on this machine now (for the processes of a test cluster)."""
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(('127.0.0.1', 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports
