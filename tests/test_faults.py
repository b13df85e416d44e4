"""Faults: one writer per run directory, file systems that refuse or fill up, and Ctrl-C at any moment.

Each ends as one line (exit code 2, or 130 for an interruption), and what was
already on disk stays as it was and loadable.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from helpers import one_line_error
from typer.testing import CliRunner

import aecore
from aecore import registry
from aecore.cli import app
from aecore.data import Dataset
from aecore.errors import FileSystemError, Notice, RunDirectoryError, RunLockedError
from aecore.hooks import hookimpl
from aecore.state import RESUME_FILE, read_resume
from aecore.testing import InterruptAt
from aecore.training import lock as lock_module
from aecore.training import resume, train
from aecore.training.default import TrainingDiverged, TrainingInterrupted
from aecore.training.lock import LOCK_FILE, RunLock

PARAMS = {"encoder": {"hidden": (16,)}, "trainer": {"epochs": 2, "batch_size": 64, "save_every_steps": 2}}
CLI_TRAIN = [
    "train", "-e", "mlp", "--classes", "1", "--set", "encoder.hidden=16", "--latent-dim", "4",
    "--epochs", "1", "-q",
]  # fmt: skip


def _train(data, out, **kwargs):
    return train("mlp", params=PARAMS, latent_dim=4, data=data, out=out, progress=False, **kwargs)


def _equal_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **extra}
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C as a terminal delivers it, whatever this process inherited.

    A shell without job control starts background commands with SIGINT ignored, and Python keeps an
    ignored SIGINT ignored (as ae's CLI does: it never takes over a handler it did not get by default), so
    under such a shell the children would never see the signals these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _ae(*args: str, **popen) -> subprocess.Popen:
    """``python -m aecore ARGS``: the ae process itself, as torchrun and the console script run it."""
    return subprocess.Popen(
        [sys.executable, "-m", "aecore", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_default_sigint if os.name == "posix" else None,
        **{"env": _env(), **popen},
    )


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, embedded) -> Path:
    """A small trained run whose checkpoint names the embedded data, so commands can reload it."""
    data = Dataset(
        "embedded",
        embedded.train.subset(torch.arange(1000)),
        embedded.test.subset(torch.arange(200)),
        {"name": "embedded"},
    )
    out = tmp_path_factory.mktemp("faults") / "run"
    train("mlp", data=data, latent_dim=4, params={"encoder": {"hidden": "16"}, "trainer": {"epochs": 1}},
          out=out, progress=False)  # fmt: skip
    return out


# -- one writer per run directory ----------------------------------------------------------------


def test_a_second_writer_fails_at_once_naming_the_holder(tiny_data, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with RunLock.acquire(run, busy="wait", unwritable="elsewhere"):
        for kwargs in ({}, {"overwrite": True}):
            with pytest.raises(
                RunLockedError, match=rf"in use by another run \(pid {os.getpid()}, started "
            ) as e:
                _train(tiny_data, run, **kwargs)
            assert "\n" not in str(e.value) and "choose another --out" in str(e.value)
        assert [p.name for p in run.iterdir()] == [LOCK_FILE]  # the refused runs wrote nothing
    done = _train(tiny_data, run)  # released: the directory is free again
    assert LOCK_FILE not in os.listdir(run)  # and a finished run leaves no lock file
    with RunLock.acquire(run, busy="wait", unwritable="elsewhere"):
        with pytest.raises(RunLockedError, match="before resuming"):
            resume(run, data=tiny_data)
        with pytest.raises(RunLockedError):
            _train(tiny_data, run, overwrite=True)
    assert _equal_weights(aecore.load(run), done.model)  # the refused writers changed nothing


def test_a_lock_dies_with_its_process(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    code = (
        "import sys, time; from pathlib import Path; from aecore.training.lock import RunLock\n"
        "lock = RunLock.acquire(Path(sys.argv[1]), busy='wait', unwritable='elsewhere')\n"
        "print('locked', flush=True); time.sleep(120)\n"
    )
    holder = subprocess.Popen([sys.executable, "-c", code, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid}, started .*: python -c "):
            RunLock.acquire(run, busy="wait", unwritable="elsewhere")
    finally:
        holder.kill()  # SIGKILL: no chance to clean up
        holder.wait()
    assert (run / LOCK_FILE).exists()  # left behind, but it locks nothing now
    with RunLock.acquire(run, busy="wait", unwritable="elsewhere") as again:
        assert again.held


def test_without_file_locks_a_run_goes_on_and_says_so(tiny_data, tmp_path, monkeypatch):
    monkeypatch.setattr(lock_module, "fcntl", None)
    monkeypatch.setattr(lock_module, "msvcrt", None)
    with pytest.warns(Notice, match="without file locks"):
        result = _train(tiny_data, tmp_path / "run")
    assert result.checkpoint.exists()


@pytest.mark.slow
def test_two_ae_train_on_the_same_out_one_runs_the_other_fails_at_once(tmp_path):
    out = tmp_path / "run"
    first = _ae(*CLI_TRAIN, "--epochs", "500", "--set", "trainer.save_every_steps=1", "--out", str(out))
    try:
        _wait_for(out / RESUME_FILE, first)
        for extra, says in (
            (["--overwrite"], f"in use by another run (pid {first.pid}, started "),
            ([], "already"),
        ):
            second = _ae(*CLI_TRAIN, "--out", str(out), *extra)
            _, err = second.communicate(timeout=300)
            assert second.returncode == 2, err
            assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err
            assert says in err, err
        resumed = _ae("train", "--resume", str(out), "-q")
        _, err = resumed.communicate(timeout=300)
        assert resumed.returncode == 2 and f"pid {first.pid}" in err and "before resuming" in err, err
        assert first.poll() is None  # the first run went on, undisturbed
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 130 and "Resume with: ae train --resume" in err, err
    assert read_resume(out).trainer["epoch"] >= 1  # its state, written by it alone, loads
    assert not (out / LOCK_FILE).exists()


# -- file systems that refuse ---------------------------------------------------------------------


@pytest.fixture
def read_only(monkeypatch):
    """``read_only(folder)``: creating or writing anything under it fails with EROFS.

    What a read-only mount does; chmod cannot show it where the tests run as
    root, who may write anywhere.
    """
    roots: list[str] = []
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        path = os.path.abspath(os.fspath(path))
        return any(path == r or path.startswith(r + os.sep) for r in roots)

    def refuse(path):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if inside(path) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_mkdir(path, mode=0o777, *, dir_fd=None):
        if inside(path):
            if os.path.isdir(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
            refuse(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    return lambda folder: roots.append(os.path.abspath(folder))


class DiskFull:
    """While ``on``, every file write fails with ENOSPC, as on a full disk."""

    def __init__(self, monkeypatch) -> None:
        self.on = False
        real = os.fdopen
        outer = self

        class Full:
            def __init__(self, f) -> None:
                self.f = f

            def write(self, data):
                if outer.on:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real(fd, mode, *args, **kwargs)
            return Full(f) if "w" in mode else f

        monkeypatch.setattr(os, "fdopen", fdopen)


class FillDiskAt:
    """Fills the disk after a given step."""

    def __init__(self, disk: DiskFull, epoch: int, step: int) -> None:
        self.disk, self.at = disk, (epoch, step)

    @hookimpl
    def ae_step_end(self, run, epoch, step, batch_size, loss):
        if (epoch, step) == self.at:
            self.disk.on = True


def test_out_under_a_file_or_where_folders_cannot_be_made(runner, run_dir, tmp_path):
    mine = tmp_path / "notes.txt"
    mine.write_text("the user's")
    targets = [mine / "run", mine]
    if Path("/proc").is_dir() and sys.platform.startswith("linux"):
        targets.append(Path("/proc/aecore-test/run"))
    for out in targets:
        one_line_error(
            runner.invoke(app, [*CLI_TRAIN, "--out", str(out)]), f"--out {out}" if out == mine else str(out)
        )
    assert mine.read_text() == "the user's"
    for command in (["eval", "--out"], ["encode", "--out"]):
        if command[0] not in registry.names("command"):
            continue
        one_line_error(
            runner.invoke(app, [command[0], str(run_dir), *command[1:], str(mine / "x.csv")]), "x.csv"
        )


def test_a_read_only_run_directory_is_one_line_and_keeps_what_was_there(runner, run_dir, read_only, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "eval.csv").write_text("an earlier evaluation\n")
    before = _snapshot(run)
    read_only(run)
    one_line_error(runner.invoke(app, [*CLI_TRAIN, "--out", str(run), "--overwrite"]), str(run), "read-only")
    one_line_error(
        runner.invoke(app, [*CLI_TRAIN, "--out", str(run / "again")]), str(run / "again"), "read-only"
    )
    one_line_error(runner.invoke(app, ["train", "--resume", str(run)]), str(run), "read-only")
    eval_out = run / "eval.csv"
    one_line_error(runner.invoke(app, ["eval", str(run), "--out", str(eval_out), "--overwrite"]), "read-only")
    if "encode" in registry.names("command"):
        one_line_error(runner.invoke(app, ["encode", str(run), "--out", str(run / "codes.npy")]), "read-only")
    assert _snapshot(run) == before
    aecore.load(run)  # still loadable


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes to 0o555 folders")
def test_a_folder_without_write_permission(runner, run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    before = _snapshot(run)
    run.chmod(0o555)
    try:
        one_line_error(runner.invoke(app, [*CLI_TRAIN, "--out", str(run), "--overwrite"]), str(run))
        one_line_error(runner.invoke(app, ["train", "--resume", str(run)]), str(run))
        one_line_error(runner.invoke(app, ["eval", str(run), "--out", str(run / "eval.csv")]), "eval.csv")
    finally:
        run.chmod(0o755)
    assert _snapshot(run) == before


def test_a_full_disk_mid_run_keeps_what_was_saved_and_resume_finishes_the_run(
    tiny_data, tmp_path, monkeypatch
):
    reference = _train(tiny_data, tmp_path / "reference")
    disk = DiskFull(monkeypatch)
    run = tmp_path / "run"
    with pytest.raises(FileSystemError) as info:
        _train(tiny_data, run, hooks=[FillDiskAt(disk, 2, 3)])  # the save after step 4 fails
    message = str(info.value)
    assert "\n" not in message and "no space" in message and f"ae train --resume {run}" in message
    assert info.value.errno == errno.ENOSPC
    state = read_resume(run)  # the last resume file written before the disk filled
    assert (state.trainer["epoch"], state.trainer["step"]) == (2, 2)
    assert aecore.load(run).metadata["metrics"]["epoch"] == 1  # epoch 1's checkpoint, whole
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]  # no half-written file
    assert not (run / LOCK_FILE).exists()
    disk.on = False  # space freed
    resumed = resume(run, data=tiny_data, progress=False)
    assert _equal_weights(resumed.model, reference.model)  # nothing was lost


def test_cli_full_disk_is_one_line_and_eval_keeps_the_old_file(runner, run_dir, tmp_path, monkeypatch):
    from aecore.training import run as run_module

    disk = DiskFull(monkeypatch)
    real = run_module.plugin_manager
    monkeypatch.setattr(
        run_module, "plugin_manager", lambda hooks, **kw: real([*hooks, FillDiskAt(disk, 1, 2)], **kw)
    )
    out = tmp_path / "run"
    line = one_line_error(
        runner.invoke(app, [*CLI_TRAIN, "--set", "trainer.save_every_steps=1", "--out", str(out)])
    )
    assert "no space" in line and f"--resume {out}" in line
    monkeypatch.setattr(run_module, "plugin_manager", real)
    disk.on = False
    assert runner.invoke(app, ["train", "--resume", str(out), "-q"]).exit_code == 0
    aecore.load(out)

    csv = tmp_path / "eval.csv"
    csv.write_text("an earlier evaluation\n")
    disk.on = True
    one_line_error(
        runner.invoke(app, ["eval", str(run_dir), "--out", str(csv), "--overwrite"]), str(csv), "no space"
    )
    assert csv.read_text() == "an earlier evaluation\n"


# -- what a killed run leaves behind --------------------------------------------------------------


def test_the_next_run_holding_the_lock_removes_leftover_temporaries(tiny_data, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        _train(tiny_data, run, hooks=[InterruptAt(1, 4)])
    leftovers = [".resume.safetensors.k3j4h5g6.tmp", ".model.safetensors.a_b1c2d3.tmp"]
    mine = ["notes.tmp", ".draft.tmp", "resume.safetensors.tmp"]  # not of the atomic writes' naming
    for name in leftovers + mine:
        (run / name).write_bytes(b"half a file")
    resume(run, data=tiny_data, progress=False)
    names = set(os.listdir(run))
    assert not names & set(leftovers) and set(mine) <= names

    fresh = tmp_path / "fresh"  # a directory a SIGKILLed run left with only its lock and a temporary
    fresh.mkdir()
    (fresh / LOCK_FILE).write_text("{}")
    (fresh / leftovers[0]).write_bytes(b"half a file")
    _train(tiny_data, fresh)  # holds no work: no --overwrite needed
    assert leftovers[0] not in os.listdir(fresh)
    with pytest.raises(RunDirectoryError, match="already holds files"):
        _train(tiny_data, fresh)


def test_divergence_says_what_is_kept_even_after_the_run_directory_was_deleted(tiny_data, tmp_path):
    class DeleteAndPoison:
        @hookimpl
        def ae_after_step(self, run, model, epoch, step):
            if (epoch, step) == (2, 3):
                shutil.rmtree(run.out_dir)
                next(model.parameters()).fill_(float("inf"))

    with pytest.raises(TrainingDiverged) as info:
        _train(tiny_data, tmp_path / "gone", hooks=[DeleteAndPoison()])
    assert "no longer exists" in str(info.value) and "kept in" not in str(info.value)

    class Poison:
        @hookimpl
        def ae_after_step(self, run, model, epoch, step):
            if (epoch, step) == (2, 3):
                next(model.parameters()).fill_(float("inf"))

    with pytest.raises(TrainingDiverged) as info:
        _train(tiny_data, tmp_path / "kept", hooks=[Poison()])
    assert f"kept in {tmp_path / 'kept'} (model.safetensors, best.safetensors, resume.safetensors)" in str(
        info.value
    )


# -- Ctrl-C at any moment --------------------------------------------------------------------------


def test_ctrl_c_after_the_last_step_is_not_lost(tiny_data, tmp_path):
    reference = _train(tiny_data, tmp_path / "reference")
    run = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="at the end of epoch 2; its state is saved"):
        _train(tiny_data, run, hooks=[InterruptAt(2, None)])  # during the last epoch's end
    assert read_resume(run).trainer["done"]
    resumed = resume(run, data=tiny_data, progress=False)
    assert _equal_weights(resumed.model, reference.model)


SITE = '''
import os, signal, sys, time

marker = os.environ["AE_TEST_MARKER"]
stall_import = os.environ.get("AE_TEST_STALL_IMPORT")


class Stall:
    """Holds up one import: the moment of start-up a Ctrl-C is to hit."""

    def find_spec(self, name, path=None, target=None):
        if name == stall_import:
            sys.meta_path.remove(self)
            open(marker, "w").close()
            time.sleep(60)
        return None


if stall_import:
    sys.meta_path.insert(0, Stall())
if os.environ.get("AE_TEST_STALL_EXIT"):  # holds up the exit of a finished command
    import atexit

    def stall():
        open(marker, "w").close()
        time.sleep(60)

    atexit.register(stall)
if os.environ.get("AE_TEST_SWALLOW"):  # a library that swallows Ctrl-C while the command runs
    import aecore.evaluate

    real = aecore.evaluate.reconstruction_metrics

    def swallowing(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
        except KeyboardInterrupt:
            pass
        return real(*args, **kwargs)

    aecore.evaluate.reconstruction_metrics = swallowing
'''


@pytest.fixture
def site(tmp_path) -> Path:
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(textwrap.dedent(SITE))
    return folder


def _interrupted(result_err: str) -> None:
    lines = result_err.splitlines()
    assert lines == ["error: interrupted."], result_err


@pytest.mark.parametrize("moment", ["start-up", "exit"])
def test_ctrl_c_while_ae_starts_or_exits_is_one_line_and_130(site, tmp_path, moment):
    marker = tmp_path / "marker"
    extra = (
        {"AE_TEST_STALL_IMPORT": "aecore.cli.app"} if moment == "start-up" else {"AE_TEST_STALL_EXIT": "1"}
    )
    env = _env(PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               AE_TEST_MARKER=str(marker), **extra)  # fmt: skip
    process = _ae("plugins", "list", env=env)
    _wait_for(marker, process)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, (out, err)
    _interrupted(err)
    if moment == "exit":
        assert "aecore" in out  # the command had done its work


@pytest.mark.slow
def test_a_swallowed_ctrl_c_still_ends_with_130(site, tmp_path, run_dir):
    env = _env(PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]),
               AE_TEST_MARKER=str(tmp_path / "marker"), AE_TEST_SWALLOW="1")  # fmt: skip
    process = _ae("eval", str(run_dir), "--no-pca", env=env)
    out, err = process.communicate(timeout=300)
    assert process.returncode == 130, (out, err)
    _interrupted(err)
