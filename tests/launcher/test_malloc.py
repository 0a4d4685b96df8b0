"""The faster malloc (launcher/malloc.py): which library, when the process starts again, and that it does; the
launchers that start again with it (`bertflow`, `python -m launcher.train`) before anything imports torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from launcher import malloc as allocator


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
    code = ("import sys; from launcher.malloc import start_again_with_faster_malloc; "
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


def test_the_launchers_choose_the_malloc_before_torch_is_imported():
    """The restart must come before torch (and its own malloc use) is loaded, or torch loads twice: the launchers
    import only the standard library before it, and the packages they then run load torch themselves."""
    code = ("import sys, launcher.bertflow, launcher.train, launcher.malloc; "
            "print(sorted(m for m in ('torch', 'bert_core', 'flows', 'prefect', 'mlflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]"]


def test_the_packages_import_their_public_names_eagerly():
    """No lazy names any more (the malloc restart left bert_core): importing a package imports what it exports,
    the names are the modules' own objects, and the public names are the ones the lazy packages had."""
    code = ("import sys, bert_core, bert_core.training, bert_core.training.recipe, bert_core.checkpoint; "
            "print('torch' in sys.modules, bert_core.training.fit is bert_core.training.recipe.fit, "
            "bert_core.load_pretrained is bert_core.checkpoint.load_pretrained, "
            "all(n in vars(bert_core) for n in bert_core.__all__), "
            "all(n in vars(bert_core.training) for n in bert_core.training.__all__)); "
            "print(*sorted(bert_core.__all__)); print(*sorted(bert_core.training.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "True True True True True",
        "BertConfig BertEncoder BertTokenizer Encoding FAMILIES get_family load_finetuned load_pretrained "
        "save_finetuned",
        "Callback FitResult TrainConfig TrainingDiverged build_split_features effective_spec evaluate_and_tune "
        "evaluate_features evaluate_model_dir feature_settings features_fingerprint fit fit_task predict_logits rows_name"]


@pytest.mark.parametrize("command", [["-m", "launcher.train"], ["-m", "bert_core.training"]])
def test_training_runs_through_the_launcher_and_without_it(command):
    """`python -m launcher.train` is `python -m bert_core.training` (same parser, same main) after the restart;
    `python -m bert_core.training` itself still runs, with the malloc it was started with."""
    done = subprocess.run([sys.executable, *command, "--help"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("usage: python -m bert_core.training [-h] --output-dir OUTPUT_DIR"), done.stdout
    assert "--config CONFIG" in done.stdout


def test_the_bertflow_command_runs_the_cli_after_the_restart(monkeypatch, capsys):
    """The console script's main: a bad BERTFLOW_MALLOC is a clear error before anything runs; else the CLI gets
    the command line's arguments."""
    from launcher import bertflow

    monkeypatch.setenv("BERTFLOW_MALLOC", "/nowhere/libtcmalloc.so.4")
    monkeypatch.delenv(allocator._STARTED_AGAIN, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    assert bertflow.main() == 2
    assert "bertflow: error: BERTFLOW_MALLOC='/nowhere/libtcmalloc.so.4': no such library file" in capsys.readouterr().err

    import flows.cli

    seen = []
    monkeypatch.setenv("BERTFLOW_MALLOC", "system")
    monkeypatch.setattr(flows.cli, "main", lambda argv: seen.append(argv) or 7)
    monkeypatch.setattr(sys, "argv", ["bertflow", "tasks", "--x"])
    assert bertflow.main() == 7 and seen == [["tasks", "--x"]]
