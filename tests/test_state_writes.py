"""Every state and report write is atomic, signed before it is trusted and contained in its experiment
folder, at the moment it is made (issue 31, item 6 and its storage cases)."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from fer_core.errors import FerError
from sweeps.config.settings import load_settings
from sweeps.state.record import RECORD, read_record, write_record
from sweeps.state.signing import sign_experiment, verify_experiment, write_signed

from .conftest import REPO
from .test_report_trials import SETTINGS, table  # noqa: F401 (a fixture)
from .test_resume_guard import NO_BUDGET, _Evil, _experiment

# Rewrites the signed record of the experiment argv[1] as fast as it can, until killed.
_REWRITER = """
import sys
from sweeps.config.settings import load_settings
from sweeps.state.record import write_record
print("ready", flush=True)
n = 0
while True:
    n += 1
    write_record(sys.argv[1], load_settings(None, {"time_budget": "", "num_samples": n % 50 + 1}))
"""


def test_a_kill_at_any_instant_leaves_a_signed_record_that_resume_accepts(tmp_path):
    exp = str(tmp_path / "exp")
    write_record(exp, load_settings(None, NO_BUDGET))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for delay in (0.3, 0.55, 0.8, 1.05):
        p = subprocess.Popen(
            [sys.executable, "-c", _REWRITER, exp], env=env, stdout=subprocess.PIPE, text=True
        )
        assert p.stdout.readline() == "ready\n"
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        verify_experiment(exp)  # the record on disk, old or new, is signed: --resume accepts it
        assert read_record(exp).num_samples >= 1  # and whole


def _writers(trials):
    """One writer of each kind of report file, by the file it writes in the report folder."""
    import matplotlib.pyplot as plt

    from fer_core.apps.figures import save_png
    from fer_core.checkpoint import copy_checkpoint
    from sweeps.config.space import to_optuna
    from sweeps.report import plots
    from sweeps.report.html import write_html
    from sweeps.report.trials import write_csv

    def study(p):
        built, _ = plots.build_study(trials, to_optuna(SETTINGS.search_space), SETTINGS.mode)
        plots.save_study(built, "x", SETTINGS.metric, p)

    return {
        "report.html": lambda p: write_html(p.with_name("report.md")),
        "confusion_matrix.png": lambda p: save_png(plt.figure(), p),
        "trials.csv": lambda p: write_csv(trials, SETTINGS, p),
        "optuna.db": study,
        "best.pt": lambda p: copy_checkpoint(p.with_name("report.md"), p),
    }


def test_a_link_planted_at_any_report_file_after_the_start_is_never_followed(tmp_path, table):  # noqa: F811
    """Each write refuses the link in one line (the one writer) or replaces it (``write_atomic``'s rename)."""
    report = tmp_path / "exp" / "report"
    report.mkdir(parents=True)
    (report / "report.md").write_text("# r\n\ntext\n")
    outside = tmp_path / "outside.txt"
    outside.write_text("precious\n")
    for name, write in _writers(table).items():
        (report / name).symlink_to(outside)
        try:
            write(report / name)
            assert not (report / name).is_symlink(), name
        except FerError as e:
            assert f"{name}: a symbolic link to {outside}, outside the experiment" in str(e), name
        assert outside.read_text() == "precious\n", name


def test_a_linked_folder_on_the_way_to_a_state_file_is_refused(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    storage = tmp_path / "storage"
    storage.mkdir()
    (storage / "exp").symlink_to(outside)
    with pytest.raises(FerError, match="the experiment folder is a symbolic link"):
        write_record(str(storage / "exp"), load_settings(None, NO_BUDGET))
    assert list(outside.iterdir()) == []


def test_resume_verifies_the_state_at_the_moment_tune_restores_it(tmp_path):
    """The driver checked the folder minutes before; a tuner.pkl swapped since is refused, not unpickled."""
    from sweeps.tune.runs import run_search

    storage = tmp_path / "storage"
    exp = _experiment(storage / "x")
    sign_experiment(str(exp))
    verify_experiment(str(exp))  # the driver's early check passes
    marker = tmp_path / "pwned"
    (exp / "tuner.pkl").write_bytes(pickle.dumps(_Evil(marker)))  # swapped during the probe
    settings = load_settings(None, {**NO_BUDGET, "name": "x", "storage": str(storage)})
    placement = SimpleNamespace(resources={"cpu": 1, "gpu": 0}, concurrent=1)
    with pytest.raises(FerError, match=r"tuner.pkl: changed after the sweep"):
        run_search(settings, str(tmp_path), placement, resume=True)
    assert not marker.exists()


def _manifest_cli(*argv):
    cmd = [sys.executable, "-m", "sweeps.manifest", *argv]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("target", [".", "/usr"])
def test_manifest_sign_and_verify_never_follow_a_link(tmp_path, target):
    exp = _experiment(tmp_path / "exp")
    sign_experiment(str(exp))
    (exp / "trial_1" / "link").symlink_to(target)
    for action in ("verify", "sign"):
        r = _manifest_cli(action, str(exp))
        assert r.returncode == 2, r.stdout + r.stderr
        assert r.stderr.count("\n") == 1 and "trial_1/link: a symbolic link" in r.stderr, r.stderr


def _small_disk(folder: Path, size: str):
    """A real filesystem (tmpfs) of ``size`` at ``folder``, unmounted after; skipped where mounting is not
    allowed."""
    folder.mkdir()
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True
    )
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.fixture
def full_disk(tmp_path):
    """A real 1 MiB filesystem (tmpfs), filled by the tests but for a few KiB."""
    yield from _small_disk(tmp_path / "small", "1m")


def _fill(folder: Path, leave: int) -> Path:
    free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
    filler = folder / "filler"
    filler.write_bytes(b"\0" * max(0, free - leave))
    return filler


def test_a_full_cache_disk_is_one_line_and_leaves_no_temporary_file(full_disk, demo_root):
    from fer_core.decode_cache import load_split
    from fer_core.errors import DataError

    cache = full_disk / "cache"
    cache.mkdir()
    _fill(full_disk, leave=8192)
    for _ in range(2):  # the same on the next run: nothing left behind to trip over
        with pytest.raises(DataError, match=r"cannot write the image cache \(.* MiB free there\)") as e:
            load_split(str(demo_root), "val", 48, True, cache_dir=str(cache))
        assert "\n" not in str(e.value)
        assert [p.name for p in cache.iterdir() if not p.name.endswith(".lock")] == []


def test_a_full_storage_disk_is_one_line_and_keeps_the_signed_state(full_disk):
    exp = str(full_disk / "exp")
    write_record(exp, load_settings(None, {**NO_BUDGET, "num_samples": 3}))
    filler = _fill(full_disk, leave=0)
    with pytest.raises(FerError, match="No space left on device") as e:
        write_record(exp, load_settings(None, {**NO_BUDGET, "num_samples": 4, "seed": 9}))
    assert "\n" not in str(e.value)
    filler.unlink()  # space again: the experiment is whole, signed, and takes the write
    verify_experiment(exp)
    assert read_record(exp).num_samples in (3, 4)
    write_record(exp, load_settings(None, {**NO_BUDGET, "num_samples": 4}))
    verify_experiment(exp)
    assert read_record(exp).num_samples == 4 and (full_disk / "exp" / RECORD).is_file()


@pytest.fixture
def small_storage(tmp_path):
    """A real 6 MiB filesystem (tmpfs): a tiny sweep's first checkpoint does not fit."""
    yield from _small_disk(tmp_path / "small", "6m")


@pytest.mark.slow  # a tiny sweep that fills its storage, then its resume (~1 min)
def test_a_full_storage_is_one_line_and_the_sweep_resumes_once_there_is_space(small_storage):
    """Ray's uploads are cut short (experiment_state, error.pkl): one line; then, with room, --resume takes
    the signed state back from Ray's staging folder (the user signs nothing) and retries the failed trial."""
    from .sweep_utils import run_sweep

    settings = ("num_samples=1", "max_failures=0")
    r = run_sweep(small_storage, "full", *settings)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and last.startswith("error: ") and "the storage is full" in last, last
    subprocess.run(["mount", "-o", "remount,size=512m", str(small_storage)], check=True)  # space again
    r = run_sweep(small_storage, "full", *settings, "--resume")
    assert "put back the signed state" in r.stdout and "retrying the failed trials" in r.stdout, r.stderr
    df = subprocess.run(["df", "-k", str(small_storage)], capture_output=True, text=True).stdout
    assert r.returncode == 0, df + r.stdout[-2000:] + r.stderr[-2000:]
    assert (small_storage / "full" / "report" / "report.md").is_file()


@pytest.mark.parametrize("how", ["mv", "cp"])
def test_a_moved_or_copied_experiment_is_refused_in_one_line(tmp_path, how):
    storage = tmp_path / "storage"
    exp = _experiment(storage / "a")
    write_record(str(exp), load_settings(None, {**NO_BUDGET, "name": "a", "storage": str(storage)}))
    sign_experiment(str(exp))
    subprocess.run([how, "-a" if how == "cp" else "-T", str(exp), str(storage / "b")], check=True)
    r = subprocess.run(
        [sys.executable, "sweeps/run.py", "--storage", str(storage), "--name", "b", "--resume"],
        cwd=REPO, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert (
        r.stderr.count("\n") == 1
        and f"{storage}/b was started as {storage}/a and moved or copied" in r.stderr
    )


@pytest.mark.slow  # ~20 s of waiting on GCS's retry limit
def test_an_unreachable_gcs_storage_fails_in_seconds_in_one_line():
    """No credentials or no network: one line within ~20 s, not a silent wait (GCS retries for 15 minutes)."""
    code = (
        "from sweeps.state.storage import check_writable; check_writable('gs://fer-no-bucket/x', '--storage')"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert time.monotonic() - t0 < 40
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode != 0 and "FerError: --storage gs://fer-no-bucket/x: cannot write there" in last, last


def test_signed_files_copied_from_another_experiment_with_the_same_key_are_refused(tmp_path):
    a, b = _experiment(tmp_path / "a"), _experiment(tmp_path / "b")
    (a / "tuner.pkl").write_bytes(pickle.dumps({"tuner": "a"}))
    sign_experiment(str(a))
    sign_experiment(str(b))
    (a / "fer_manifest-driver.json").rename(a / "fer_manifest-20250101-000000-aaaaaa.json")  # as a session's
    for name in ("tuner.pkl", "fer_manifest-20250101-000000-aaaaaa.json"):
        (b / name).write_bytes((a / name).read_bytes())
    with pytest.raises(FerError, match=r"signed for another experiment .*copied in"):
        verify_experiment(str(b))


def test_state_on_s3_is_written_in_one_put_signed_and_bound(tmp_path):
    from .s3_server import BUCKET, S3

    store = S3(tmp_path)
    code = (
        "import sys; from sweeps.config.settings import load_settings; "
        "from sweeps.state.record import write_record, read_record; "
        "from sweeps.state.signing import verify_experiment, experiment_id; "
        "exp = sys.argv[1]; write_record(exp, load_settings(None, {'time_budget': '', 'num_samples': 3})); "
        "verify_experiment(exp); print(read_record(exp).num_samples, experiment_id(exp) == experiment_id(exp))"
    )
    try:
        env = {**store.env, "PYTHONPATH": str(REPO), "AWS_EC2_METADATA_DISABLED": "true"}
        r = subprocess.run([sys.executable, "-c", code, f"s3://{BUCKET}/sweeps/e"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 0 and r.stdout.split() == ["3", "True"], r.stderr[-2000:]
        names = store.files("sweeps/e")
        assert any(n.endswith("fer_sweep.json") for n in names) and not any(".tmp" in n for n in names), names
    finally:
        store.stop()


def test_two_threads_of_the_driver_writing_state_at_once_leave_every_file_signed(tmp_path):
    # The phase clock's thread writes fer_phases.json while the main thread writes the record and the winner:
    # both merge into the driver's manifest, and neither may drop the other's hash.
    exp = str(tmp_path / "exp")
    write_record(exp, load_settings(None, {}))

    def write(name: str) -> None:
        for i in range(40):
            write_signed(exp, name, f'{{"n": {i}}}'.encode())

    threads = [threading.Thread(target=write, args=(n,)) for n in ("fer_phases.json", "fer_winner.json")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    verify_experiment(exp)  # every covered file's current content is signed
