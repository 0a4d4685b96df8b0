"""The faster malloc (bert_core/allocator.py): which library, when the process starts again, and that it does."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bert_core import allocator


@pytest.fixture()
def lib_dir(tmp_path):
    (tmp_path / "libjemalloc.so.2").write_bytes(b"")
    return tmp_path


def test_auto_prefers_tcmalloc_and_falls_back_to_jemalloc(tmp_path, lib_dir):
    assert allocator.find_library([str(lib_dir)]) == str(lib_dir / "libjemalloc.so.2")
    (lib_dir / "libtcmalloc_minimal.so.4").write_bytes(b"")
    env = allocator.preload_env({"LD_PRELOAD": "/opt/other.so"}, [str(lib_dir)])
    assert env["LD_PRELOAD"] == f"{lib_dir / 'libtcmalloc_minimal.so.4'}:/opt/other.so"
    assert env[allocator._STARTED_AGAIN] and int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) >= 1 << 40


@pytest.mark.parametrize("environ", [
    {"BERTFLOW_MALLOC": "system"},                             # asked for glibc's
    {allocator._STARTED_AGAIN: "/x/libjemalloc.so.2"},         # the process that was started again
    {"LD_PRELOAD": "/usr/lib/libtcmalloc.so.4"},               # the user preloaded one already
])
def test_no_second_start_when_asked_not_to_or_already_done(environ, lib_dir):
    assert allocator.preload_env(environ, [str(lib_dir)]) is None


def test_no_library_on_the_system_means_go_on_as_is(tmp_path, monkeypatch):
    monkeypatch.setattr(allocator.sys, "prefix", str(tmp_path))
    assert allocator.preload_env({}, [str(tmp_path)]) is None


def test_a_wrong_path_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="BERTFLOW_MALLOC='/nowhere/libtcmalloc.so.4': no such library file"):
        allocator.preload_env({"BERTFLOW_MALLOC": "/nowhere/libtcmalloc.so.4"}, [str(tmp_path)])


def test_the_command_starts_again_with_the_library_mapped_or_goes_on_without_one():
    """A real process: with a tcmalloc/jemalloc on this system it runs again with the library mapped (same
    arguments, once); without one it runs as it is."""
    code = ("import sys; from bert_core.allocator import start_again_with_faster_malloc; "
            "print('start', sys.argv[1:], flush=True); start_again_with_faster_malloc(); "
            "maps = open('/proc/self/maps').read(); print('mapped', 'tcmalloc' in maps or 'jemalloc' in maps)")
    out = subprocess.run([sys.executable, "-c", code, "a", "b c"], capture_output=True, text=True, check=True,
                         env={k: v for k, v in __import__("os").environ.items()
                              if k not in ("LD_PRELOAD", "BERTFLOW_MALLOC", allocator._STARTED_AGAIN)}).stdout
    library = allocator.find_library()
    if library is None:
        assert out.splitlines() == ["start ['a', 'b c']", "mapped False"]
    else:
        assert out.splitlines() == ["start ['a', 'b c']", "start ['a', 'b c']", "mapped True"], library


def test_the_training_entry_point_chooses_the_malloc_before_torch_is_imported():
    """`python -m bert_core.training` imports bert_core and bert_core.training before its __main__ starts again:
    both import their names lazily, so torch (and its own malloc use) is not loaded twice; the lazy names are
    the real objects, `fit` the function even after its module was imported first."""
    code = ("import sys, bert_core, bert_core.training, bert_core.allocator; "
            "print('torch' in sys.modules); "
            "import bert_core.training.recipe; from bert_core.training import fit, TrainConfig; "
            "from bert_core import get_family, load_pretrained; "
            "print(fit is bert_core.training.recipe.fit, TrainConfig.__name__, callable(get_family))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["False", "True TrainConfig True"]
