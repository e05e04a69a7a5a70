"""The runtime decisions (for CPU and, without needing one, for CUDA), the fast path's optional pieces on
CPU, and the benchmark CLI end to end on the small demo set."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

from fer_core.checkpoint import load_checkpoint
from fer_core.errors import ConfigError
from fer_core.runtime import plan_runtime
from fer_core.train import train

from .conftest import REPO, tiny_config


def test_cuda_plan_uses_bf16_channels_last_workers_and_big_eval_batches():
    p = plan_runtime("cuda", cpus=16, bf16_supported=True, augment_backend="albumentations")
    assert (p.amp_dtype, p.channels_last, p.compile, p.num_workers, p.eval_batch_size) == (
        torch.bfloat16,
        True,
        False,
        8,
        1024,
    )
    assert p.device == torch.device("cuda") and p.pin_memory  # the plan is the Runtime a GPU run gets
    assert plan_runtime("cuda", cpus=4, bf16_supported=False).amp_dtype is torch.float16  # pre-Ampere GPUs
    assert (
        plan_runtime("cuda", cpus=1, bf16_supported=True, augment_backend="albumentations").num_workers == 1
    )
    assert plan_runtime("cuda", cpus=16, bf16_supported=True, compile="on").compile


def test_augment_backend_auto_is_torch_on_cuda_albumentations_on_cpu():
    """auto keeps a CPU run on albumentations (what it has always computed); on CUDA the split and its
    augmentation live on the GPU, so no loader workers are started."""
    cuda = plan_runtime("cuda", cpus=16, bf16_supported=True)
    assert (cuda.augment_backend, cuda.num_workers) == ("torch", 0)
    cpu = plan_runtime("cpu", cpus=2, bf16_supported=False)
    assert (cpu.augment_backend, cpu.num_workers) == ("albumentations", 0)
    assert (
        plan_runtime("cpu", cpus=2, bf16_supported=False, augment_backend="torch").augment_backend == "torch"
    )
    assert "augment=albumentations" in cpu.describe()


def test_cpu_plan_is_fp32_channels_last_and_no_workers():
    p = plan_runtime("cpu", cpus=2, bf16_supported=False)
    assert (p.amp_dtype, p.channels_last, p.compile, p.num_workers, p.threads, p.eval_batch_size) == (
        None,
        True,
        False,
        0,
        2,
        256,
    )
    assert not plan_runtime("cpu", cpus=2, bf16_supported=False, channels_last="off").channels_last
    assert plan_runtime("cpu", cpus=2, bf16_supported=False, eval_batch_size=64).eval_batch_size == 64
    with pytest.raises(ConfigError, match="'fp16' needs a CUDA device"):
        plan_runtime("cpu", cpus=2, bf16_supported=False, precision="fp16")


@pytest.mark.slow  # torch.compile
def test_compiled_bf16_training_runs_and_saves_plain_weights(demo_root, tmp_path):
    """torch.compile and bf16 autocast, the pieces a GPU run may use, exercised on CPU with a small timm model."""
    res = train(
        tiny_config(
            demo_root,
            tmp_path / "c",
            model="test_efficientnet",
            compile="on",
            precision="bf16",
            epochs=1,
            steps_per_epoch=2,
        )
    )
    state = load_checkpoint(res["last_checkpoint"])
    assert not any(k.startswith("_orig_mod.") for k in state["model"])  # loadable without compile
    assert all(v.dtype != torch.bfloat16 for v in state["model"].values())  # autocast leaves weights fp32
    assert res["history"][0]["train_loss"] > 0


@pytest.mark.slow  # a benchmark run
def test_bench_cli_prints_all_three_paths_and_ratios(demo_root, tmp_path):
    """A sweep's trial config (the demo sweep: lr, batch and augmentation at their middles, the shape given),
    as ``python -m sweeps.trial_config`` writes it; the sweep YAML itself is refused, naming that command."""
    from sweeps.trial_config import middle_trial_config

    trial = tmp_path / "trial.yaml"
    trial.write_text(yaml.safe_dump(middle_trial_config(REPO / "sweeps" / "configs" / "default.yaml")))
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "fer_core.tools.bench",
            "--data",
            str(demo_root),
            "--device",
            "cpu",
            "--img-size",
            "32",
            "--batch-size",
            "8",
            "--min-seconds",
            "0.2",
            "--warmup",
            "1",
            "--rounds",
            "1",
            "--config",
            str(trial),
            "--json",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.splitlines()[0] == f"data: {demo_root} (given with --data)", (
        r.stderr
    )  # says what it measures
    assert f"config: {trial}" in r.stderr
    res = json.loads(r.stdout)
    ips = res["images_per_s"]
    assert all(ips[k] > 0 for k in ("seed", "fer_core", "ready_step"))
    assert all(t >= 0.2 for t in res["timed_s"].values()), res["timed_s"]
    assert res["ratio_b_over_a"] == pytest.approx(ips["fer_core"] / ips["seed"])
    assert res["ratio_b_over_c"] == pytest.approx(ips["fer_core"] / ips["ready_step"])
    assert res["seed_colab_reference_images_per_s"] is None  # a reference printed on CUDA only
    assert all(res["peak_memory_mib"][k] > 50 for k in ips)  # at least the model and torch are resident
    s = res["settings"]
    assert (s["img_size"], s["batch_size"], s["device"]) == (32, 8, "cpu") and "channels_last=on" in s[
        "fer_core_runtime"
    ]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_bench_asked_for_a_missing_gpu_says_so_in_one_line(demo_root):
    r = subprocess.run(
        [sys.executable, "-m", "fer_core.tools.bench", "--data", str(demo_root), "--device", "cuda"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "error: key 'device' = 'cuda' but no CUDA GPU is visible; use device=auto or cpu"
    ]


@pytest.mark.slow  # four benchmark CLI processes: ~8 s
def test_bench_rejects_impossible_settings_in_one_line():
    for argv, msg in (
        (["--min-seconds", "0"], "error: --min-seconds = 0.0; it must be at least 0.01"),
        (["--batch-size", "-2"], "error: --batch-size = -2; it must be at least 1"),
        (["no_such_key=1"], "error: command line: unknown key 'no_such_key'"),
        (["--parity", "channels_last=off"], "error: --parity compares fixed plain and fast settings"),
    ):
        r = subprocess.run(
            [sys.executable, "-m", "fer_core.tools.bench", *argv],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=300,
        )
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith(msg), r.stderr


def test_cuda_workers_come_out_of_the_process_share():
    """Four trials on one GPU of a 16-core node get 4 CPUs each: with albumentations 3 workers each, not 8
    (the node's 16 - 1)."""
    alb = {"bf16_supported": True, "augment_backend": "albumentations"}
    assert plan_runtime("cuda", cpus=16, threads=4, **alb).num_workers == 3
    assert plan_runtime("cuda", cpus=16, threads=1, **alb).num_workers == 1
    assert plan_runtime("cuda", cpus=2, threads=8, **alb).num_workers == 1  # never more than there is


@pytest.mark.slow  # starts a Ray node and runs a real trial in it
def test_a_sweep_trial_sizes_its_threads_and_workers_by_its_allocation(demo_root, tmp_path):
    """A real Ray trial (the sweep's trainable, 1 CPU of a Ray node of 16) training on the demo set: its
    thread pools (torch's intra- and inter-op pools, OpenCV's) are sized by its allocation, not by the
    machine's CPUs, and it starts no extra processes."""
    out = tmp_path / "probe.json"
    env = dict(os.environ, FER_CACHE_DIR=str(tmp_path / "cache"))
    r = subprocess.run(
        [sys.executable, "tests/trial_share_probe.py", str(demo_root), str(out), "16", "1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["assigned_cpus"] == 1.0
    assert (got["torch_threads"], got["torch_interop_threads"], got["cv2_threads"]) == (1, 1, 1), got
    assert got["peak_children"] == 0, got  # CPU training: no data-loader workers
    assert got["peak_threads"] - got["baseline_threads"] <= 2, (
        got
    )  # Ray's own threads aside: one compute thread
