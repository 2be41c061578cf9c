"""`run`, subprocess.run for the tests' command lines: `python <script.py> ...` or `python -m <module> ...`
run in a fork of a process that has already imported TensorFlow, not a new interpreter.

Why: a new interpreter spends about 6 s importing TensorFlow (AVX2-only AMD EPYC), and the tests run
some 300 command lines, most of which end within a second of their start (the bad-input cases above
all): half of CI's time went to imports. A fork of a process that imported TensorFlow but never ran an
operation (so that no TensorFlow thread pool exists yet to be lost in the fork) starts the command in
milliseconds; the command then runs as under `python`: sys.argv, sys.path[0], the working folder and
the environment are the command line's, `__name__` is '__main__', and the fork ends as the interpreter
does (SystemExit's status or message, an uncaught exception's traceback, waiting for threads, atexit),
but for tearing down its some 3,000 modules, which would take a second. Anything else falls
back to subprocess.run: other programs, standard input, environment variables that TensorFlow or
Python read as they start (PREFIXES_READ_AT_START), and a script outside the repository's top folder
(`python` would import the `fewshot` beside it, or none: the fork has this one).

One server per pytest process (xdist worker), started on first use, ends with it.
"""

import json
import os
import subprocess
import sys
import tempfile
import threading

PREFIXES_READ_AT_START = ('TF_ENABLE_', 'TF_CPP_', 'TF_NUM_', 'TF_XLA', 'XLA_', 'CUDA_', 'OMP_', 'KMP_', 'MKL',
                          'ONEDNN', 'DNNL', 'PYTHON', 'LD_')
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SERVER = None
_LOCK = threading.Lock()


def run(args, *, capture_output=False, text=False, cwd=None, timeout=None, env=None, **others):
    """subprocess.run(args, capture_output=True, ...) as the tests call it, forked when it can be."""
    if not (capture_output and _forkable(args, env, cwd) and not others):
        return subprocess.run(args, capture_output=capture_output, text=text, cwd=cwd, timeout=timeout, env=env,
                              **others)
    with tempfile.TemporaryDirectory() as folder:
        outputs = [os.path.join(folder, name) for name in ('stdout', 'stderr')]
        status = _server().run({'args': list(map(str, args)), 'cwd': str(cwd or os.getcwd()),
                                'env': dict(os.environ if env is None else env), 'timeout': timeout,
                                'outputs': outputs})
        captured = []
        for path in outputs:
            with open(path, 'rb') as f:
                output = f.read()
            # As text=True decodes: universal newlines (a progress bar's '\r' too).
            captured.append(output.decode().replace('\r\n', '\n').replace('\r', '\n') if text else output)
    if status is None:
        raise subprocess.TimeoutExpired(args, timeout, *captured)
    return subprocess.CompletedProcess(args, status, *captured)


def _forkable(args, env, cwd):
    args = list(map(str, args))
    if len(args) < 2 or args[0] != sys.executable:
        return False
    if not (args[1].endswith('.py') or args[1] == '-m' and len(args) > 2):
        return False
    cwd = os.path.abspath(cwd or os.getcwd())
    first_on_path = cwd if args[1] == '-m' else os.path.dirname(os.path.join(cwd, args[1]))
    if os.path.realpath(first_on_path) != os.path.realpath(REPO):
        return False
    given = os.environ if env is None else env
    return all(given.get(name) == os.environ.get(name)
               for name in set(given) | set(os.environ) if name.startswith(PREFIXES_READ_AT_START))


class _Server:
    """The forking process: one request (a JSON line) at a time on its standard input, its exit
    status (or null: timed out) a JSON line on its standard output."""

    def __init__(self):
        self.process = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, cwd=os.path.dirname(os.path.abspath(__file__)))

    def run(self, request):
        self.process.stdin.write(json.dumps(request) + '\n')
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        if not answer:
            raise RuntimeError(f'the test launcher ended (exit status {self.process.wait()})')
        return json.loads(answer)['status']


def _server():
    global _SERVER
    with _LOCK:
        if _SERVER is None or _SERVER.process.poll() is not None:
            _SERVER = _Server()
        return _SERVER


# The server's side ----------------------------------------------------------------------------

def _serve():
    sys.path.insert(0, REPO)
    import fewshot  # noqa: F401 (first: it sets TensorFlow's CPU backend, which TensorFlow reads as it loads)
    import keras  # noqa: F401
    import tensorflow
    _import_library(fewshot)
    # TensorFlow looks for a GPU once per process, the first time anything asks (logging a CUDA error on a
    # machine without one): here, not in each child, whose standard error is the command's. It starts no
    # thread (the fork loses none).
    tensorflow.config.list_physical_devices()
    sys.path.remove(REPO)  # The child's sys.path is the command line's (see _main).
    requests, answers = sys.stdin, sys.stdout
    for line in requests:
        request = json.loads(line)
        child = os.fork()
        if child == 0:
            _become(request)  # Returns only into the command's code path below, in the child.
            return request
        answers.write(json.dumps({'status': _wait(child, request['timeout'])}) + '\n')
        answers.flush()
    return None


def _import_library(fewshot):
    """Imports the library's modules; not fewshot.cli's (they define flags, some with defaults read
    from the environment, which the child's may change), nor fewshot.__main__ (a program)."""
    import importlib
    import pkgutil
    for module in pkgutil.walk_packages(fewshot.__path__, 'fewshot.'):
        if not module.name.startswith(('fewshot.cli', 'fewshot.__main__')):
            importlib.import_module(module.name)


def _become(request):
    """In the child: the command line's process state (its group, so that a timeout ends what it started)."""
    os.setpgid(0, 0)
    os.chdir(request['cwd'])
    os.environ.clear()
    os.environ.update(request['env'])
    opened = [os.open(os.devnull, os.O_RDONLY)] + [os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                                                  for path in request['outputs']]
    for fd, descriptor in enumerate(opened):
        os.dup2(descriptor, fd)
        os.close(descriptor)


def _wait(child, timeout):
    import signal
    import time
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status)
        if deadline is not None and time.monotonic() > deadline:
            os.killpg(child, signal.SIGKILL)
            os.waitpid(child, 0)
            return None
        time.sleep(0.01)


def _main():
    request = _serve()
    if request is not None:
        os._exit(_exit_status(request['args'][1:]))


def _exit_status(args):
    """In the child: runs `python <args>` and ends as the interpreter does; returns the exit status."""
    import atexit
    try:
        _run_as_main(args)
        status = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:  # sys.exit('error: ...'): the message on standard error, status 1.
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    threading._shutdown()  # What Py_FinalizeEx does first: wait for the threads that are not daemons.
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    return status


def _run_as_main(args):
    import runpy
    if args[0] == '-m':
        sys.argv = [args[1], *args[2:]]
        sys.path[0] = os.getcwd()
        runpy.run_module(args[1], run_name='__main__', alter_sys=True)
    else:
        sys.argv = args
        sys.path[0] = os.path.dirname(os.path.abspath(args[0]))
        runpy.run_path(args[0], run_name='__main__')


if __name__ == '__main__':
    _main()
