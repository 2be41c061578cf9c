"""What this machine offers: its CPU, from /proc/cpuinfo, and its free memory, from /proc/meminfo (Linux);
empty answers elsewhere."""

import functools
import platform

# CPU flags that decide how fast bfloat16 convolutions can be: AVX-512 BF16 (dot products of bfloat16
# pairs, e.g. AMD Zen 4, Intel Cooper Lake) and AMX (tile matrix units, Intel Sapphire Rapids and later).
BFLOAT16_FLAGS = ('avx512_bf16', 'amx_bf16', 'amx_tile')


@functools.lru_cache(maxsize=None)
def _cpuinfo():
    """The first processor's fields of /proc/cpuinfo by name ({} where there is none)."""
    try:
        with open('/proc/cpuinfo') as file:
            text = file.read().split('\n\n')[0]
    except OSError:
        return {}
    return dict((key.strip(), value.strip()) for key, _, value in
                (line.partition(':') for line in text.splitlines()) if key.strip())


def cpu_model():
    """The CPU's model name, e.g. 'AMD EPYC 9R14 96-Core Processor'."""
    return _cpuinfo().get('model name') or platform.processor() or 'unknown CPU'


def bfloat16_flags():
    """Which of BFLOAT16_FLAGS this CPU has."""
    flags = set(_cpuinfo().get('flags', '').split())
    return [flag for flag in BFLOAT16_FLAGS if flag in flags]


def native_bfloat16():
    """True if the CPU computes bfloat16 natively (otherwise TensorFlow emulates it, slowly)."""
    return bool(bfloat16_flags())


def available_memory_bytes():
    """The memory this process can still take, in bytes (Linux's MemAvailable); None where unknown."""
    try:
        with open('/proc/meminfo') as file:
            return next(int(line.split()[1]) * 1024 for line in file if line.startswith('MemAvailable:'))
    except (OSError, StopIteration, ValueError):
        return None
