"""jaxcnn.host_memory: glibc keeps freed host memory for the next step.

malloc settings are process-wide, so each case runs in a fresh interpreter and
counts the minor page faults of allocating (``malloc``), filling and freeing
a large buffer several times, as XLA's CPU runtime does with a step's
temporary buffer: with glibc's defaults every round faults its pages in again, after
``reuse_host_memory()`` only the first does.
"""

import json
import os
import platform
import subprocess
import sys
import textwrap

import pytest

from jaxcnn import host_memory
from jaxcnn.config import TrainConfig
from jaxcnn.errors import ConfigError

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc",
                                reason="reuse_host_memory changes glibc's malloc only")

_PROBE = textwrap.dedent("""
    import ctypes, json, resource, sys
    from jaxcnn import host_memory
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    for step in sys.argv[1].split(","):
        if step == "reuse":
            host_memory.reuse_host_memory()
        elif step == "default":
            host_memory.reuse_host_memory(False)
    faults = []
    for _ in range(4):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buf = libc.malloc(48 << 20)  # 48 MiB: above glibc's largest mmap threshold
        ctypes.memset(buf, 1, 48 << 20)
        libc.free(buf)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"faults": faults, "state": host_memory.host_memory_state()}))
""")


def _faults(steps: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _PROBE, steps], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(out.stdout.strip().splitlines()[-1])


@glibc_only
def test_reused_memory_is_not_faulted_in_again():
    pages = (48 << 20) // 4096
    plain = _faults("none")
    reused = _faults("reuse")
    # glibc's defaults: every round maps fresh pages and faults them all in.
    assert min(plain["faults"]) > 0.9 * pages, plain
    assert plain["state"] is None
    # Kept for reuse: the first round faults the pages in, the later ones find them.
    assert reused["faults"][0] > 0.9 * pages, reused
    assert max(reused["faults"][1:]) < 0.05 * pages, reused
    assert reused["state"] == "reuse"


@glibc_only
def test_reuse_can_be_turned_back_off():
    restored = _faults("reuse,default")
    pages = (48 << 20) // 4096
    assert min(restored["faults"]) > 0.9 * pages, restored
    assert restored["state"] == "default"


def test_reuse_reports_whether_it_applied():
    applied = host_memory.reuse_host_memory()
    assert applied == (platform.libc_ver()[0] == "glibc")
    assert host_memory.host_memory_state() == ("reuse" if applied else None)


_AUTO = textwrap.dedent("""
    import json, sys
    import jax, jax.numpy as jnp
    import os
    from jaxcnn import host_memory
    os.environ.pop("GLIBC_TUNABLES", None)  # what glibc read at start counts, not os.environ now
    n = int(sys.argv[1])
    x = jnp.ones((n, n))
    compiled = jax.jit(lambda x: ((x * 2) @ x)[0]).lower(x).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    on = host_memory.reuse_host_memory_for(compiled, "auto")
    print(json.dumps({"temp": temp, "on": on, "state": host_memory.host_memory_state()}))
""")


@glibc_only
@pytest.mark.parametrize("n, tunables, expect", [
    (512, "", False),  # a few MiB: glibc's heap reuses them anyway
    (2560, "", True),  # 32-64 MiB: mapped afresh every call, and a thread's heap holds them
    (4096, "", False),  # 128 MiB: more than a thread's heap holds, reuse would not help
    (4096, "glibc.malloc.arena_max=1", True),  # one heap for the process holds them
])
def test_auto_reuses_memory_only_where_it_saves_the_page_faults(n, tunables, expect):
    child_env = dict(os.environ, GLIBC_TUNABLES=tunables)
    out = subprocess.run([sys.executable, "-c", _AUTO, str(n)], capture_output=True, text=True,
                         check=True, timeout=120, env=child_env)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    temp = got["temp"]
    assert (host_memory.MMAP_THRESHOLD_MAX < temp <= host_memory.THREAD_HEAP_MAX) == (n == 2560), got
    assert got["on"] is expect and got["state"] == ("reuse" if expect else None), got


def test_reuse_host_memory_for_checks_the_setting():
    import jax
    import jax.numpy as jnp

    compiled = jax.jit(lambda x: x + 1).lower(jnp.ones(3)).compile()
    with pytest.raises(ValueError, match="'auto', True or False"):
        host_memory.reuse_host_memory_for(compiled, "yes")
    assert host_memory.reuse_host_memory_for(compiled, True) == (platform.libc_ver()[0] == "glibc")


def test_train_config_checks_reuse_host_memory():
    from jaxcnn.config import Config, override

    assert TrainConfig().reuse_host_memory == "auto"
    assert override(Config(), {"train.reuse_host_memory": "false"}).train.reuse_host_memory is False
    assert override(Config(), {"train.reuse_host_memory": "auto"}).train.reuse_host_memory == "auto"
    for bad in ("yes-please", 1):
        with pytest.raises(ConfigError, match="train.reuse_host_memory must be auto, true or"):
            TrainConfig(reuse_host_memory=bad)


def test_reuse_host_memory_cli():
    from jaxcnn.cli import build_parser, config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["train"])).train.reuse_host_memory == "auto"
    for flag, value in (("on", True), ("off", False), ("auto", "auto")):
        args = parser.parse_args(["train", "--reuse-host-memory", flag])
        assert config_from_args(args).train.reuse_host_memory == value
    assert parser.parse_args(["bench"]).reuse_host_memory == "auto"
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--reuse-host-memory", "maybe"])


_FIT = textwrap.dedent("""
    import json, sys
    import jax, optax
    from jaxcnn import host_memory
    from jaxcnn.data import Preprocess, load_dataset
    from jaxcnn.models import build_model
    from jaxcnn.training import create_train_state, fit, split_keys
    ds = load_dataset("synthetic:28x28x1:10:256")
    state = create_train_state(build_model(sys.argv[1], ds.num_classes), ds.image_shape,
                               optax.adam(1e-3), jax.random.key(0))
    setting = {"auto": "auto", "on": True, "off": False}[sys.argv[2]]
    fit(state, ds, keys=split_keys(0), epochs=1, batch_size=128, progress=False,
        preprocess=Preprocess.fit(ds.train.images), reuse_host_memory=setting)
    print(json.dumps({"state": host_memory.host_memory_state()}))
""")


@glibc_only
@pytest.mark.parametrize("spec, setting, expect", [
    ("conv(64,3,same) flatten softmax", "auto", "reuse"),  # about 50 MiB of temporaries
    ("conv(64,3,same) flatten softmax", "off", None),
    ("conv(8,3) flatten softmax", "auto", None),  # a few MiB
    ("conv(8,3) flatten softmax", "on", "reuse"),
])
def test_fit_applies_the_setting_for_its_compiled_step(spec, setting, expect):
    out = subprocess.run([sys.executable, "-c", _FIT, spec, setting], capture_output=True,
                         text=True, check=True, timeout=300)
    assert json.loads(out.stdout.strip().splitlines()[-1])["state"] == expect


_NOTICE = textwrap.dedent("""
    import json, logging, sys
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from jaxcnn import host_memory
    first = host_memory.reuse_host_memory()
    second = host_memory.reuse_host_memory()
    print(json.dumps({"first": first, "second": second, "state": host_memory.host_memory_state(),
                      "user": host_memory.user_settings()}))
""")


def _notice(env_extra):
    out = subprocess.run([sys.executable, "-c", _NOTICE], capture_output=True, text=True,
                         check=True, timeout=120, env=dict(os.environ, **env_extra))
    return json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


@glibc_only
def test_turning_reuse_on_says_so_once_and_how_to_turn_it_off():
    got, stderr = _notice({})
    assert got["first"] and got["second"] and got["state"] == "reuse"
    lines = [line for line in stderr.splitlines() if "glibc malloc" in line]
    assert len(lines) == 1, stderr
    assert "--reuse-host-memory off" in lines[0]


@glibc_only
def test_settings_from_the_environment_win():
    # One parameter set by the user: jaxcnn changes only the other, and says which it kept.
    got, stderr = _notice({"MALLOC_MMAP_MAX_": "65536"})
    assert got["first"] and got["user"] == {"MALLOC_MMAP_MAX_": "65536"}
    assert "kept from the environment: MALLOC_MMAP_MAX_" in stderr
    # Both set (here through GLIBC_TUNABLES): nothing to change, nothing said.
    got, stderr = _notice({"GLIBC_TUNABLES": "glibc.malloc.mmap_max=65536:"
                                             "glibc.malloc.trim_threshold=131072"})
    assert got["first"] is False and got["state"] is None
    assert "glibc malloc" not in stderr


@glibc_only
def test_user_settings_keep_their_page_faults():
    # The user asked glibc for fresh mappings (MALLOC_MMAP_MAX_ kept): reuse does not undo it.
    out = subprocess.run([sys.executable, "-c", _PROBE, "reuse"], capture_output=True,
                         text=True, check=True, timeout=120,
                         env=dict(os.environ, MALLOC_MMAP_MAX_="65536"))
    faults = json.loads(out.stdout.strip().splitlines()[-1])["faults"]
    assert min(faults) > 0.9 * (48 << 20) // 4096, faults


def test_the_library_leaves_the_allocator_alone_by_default():
    import inspect

    from jaxcnn.bench import BenchConfig
    from jaxcnn.training import fit

    assert inspect.signature(fit).parameters["reuse_host_memory"].default is False
    assert BenchConfig().reuse_host_memory is False
