"""`futureseg train-predictor`: self-supervised training on cached frames, with exact resume,
stop signals, per-config checkpoints, DDP and the copy-last baseline in every val row."""

import argparse
import csv
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from futureseg.data import cache_frames, mean_std
from futureseg.predict import train_predictor
from futureseg.core.errors import ConfigError, DataError, FuturesegError
from futureseg.core.io import read_mean_std
from futureseg.core.training import NonFiniteLoss, load_checkpoint

# A tiny SimVP (IncepU translator: GroupNorm only, so DDP and one process see the same batch
# statistics) and settings that keep every run to a few seconds on 2 cores.
TINY = ["--model", "simvp", "--model-config", json.dumps({"translator": "incepu", "hid_S": 8, "hid_T": 16, "N_S": 2, "N_T": 2}),
        "--epochs", "4", "--batch-size", "8", "--lr", "0.002", "--weight-decay", "0.05",
        "--threads", "1", "--loader-workers", "0", "--log-every", "1"]

VERB = [sys.executable, "-m", "futureseg", "train-predictor"]


@pytest.fixture(scope="module")
def caches(tiny_dataset, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    for split in ("train", "val", "unlabeled", "hidden"):
        cache_frames.cache_split(tiny_dataset, split, folder / f"{split}.npy")
    mean_std.run(tiny_dataset, folder / "mean_std.json")
    return folder


def _args(caches, out, *extra, cache=("unlabeled", "train")):
    parser = argparse.ArgumentParser()
    train_predictor.add_arguments(parser)
    return parser.parse_args([
        "--cache", *[str(caches / f"{s}.npy") for s in cache], "--val-cache", str(caches / "val.npy"),
        "--mean-std", str(caches / "mean_std.json"), "--out", str(out / "model.pt"),
        "--metrics", str(out / "metrics.csv"), "--checkpoints", str(out / "checkpoints"), *TINY, *extra,
    ])


def _argv(args) -> list[str]:
    """The command line of a parsed Namespace (for the subprocess runs)."""
    argv = ["--cache", *args.cache]
    for key in ("val_cache", "mean_std", "out", "metrics", "checkpoints", "model", "model_config", "epochs",
                "batch_size", "lr", "weight_decay", "seed", "max_steps", "checkpoint_every", "log_every",
                "val_limit", "threads", "loader_workers"):
        value = getattr(args, key)
        argv += [f"--{key.replace('_', '-')}", json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b, atol=0.0):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=atol, msg=key)


def _checkpoint(folder):
    (path,) = (folder / "checkpoints").glob("*/last.pt")
    return path


@pytest.fixture
def one_thread():
    """In-process runs set torch's thread count; give pytest its own back afterwards."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- learning


def test_training_lowers_the_loss_and_logs_the_baseline(caches, tmp_path, one_thread):
    # One fixed batch (the 2 val videos) every step, so the loss curve is not batch noise.
    args = _args(caches, tmp_path, "--epochs", "8", "--batch-size", "2", "--lr", "0.01", cache=("val",))
    final = train_predictor.train(args)
    rows = _rows(tmp_path / "metrics.csv")
    losses = [float(r["train_loss"]) for r in rows]
    assert len(losses) == 8
    assert losses[-1] < 0.8 * losses[0], losses
    for prefix in ("val", "copy_last"):
        for metric in ("mse", "psnr", "ssim", "mse_f21", "psnr_f21", "ssim_f21"):
            assert rows[-1][f"{prefix}_{metric}"] != "", f"{prefix}_{metric} missing"
    assert float(rows[-1]["val_mse"]) < float(rows[0]["val_mse"])
    assert 0 < final["copy_last_ssim_f21"] <= 1 and final["copy_last_psnr"] > 0
    # the baseline does not change as the model trains
    assert len({r["copy_last_mse"] for r in rows}) == 1

    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["model_name"] == "simvp" and saved["in_shape"] == [11, 3, 32, 48]
    assert saved["model_config"]["translator"] == "incepu" and saved["model_config"]["hid_S"] == 8
    mean, std = read_mean_std(caches / "mean_std.json")
    assert saved["mean"] == pytest.approx(mean.tolist()) and saved["std"] == pytest.approx(std.tolist())
    assert saved["val_metrics"] == final
    assert (tmp_path / "metrics.csv").read_text() == (_checkpoint(tmp_path).parent / "metrics.csv").read_text()


def test_convlstm_trains_with_scheduled_sampling(caches, tmp_path, one_thread, monkeypatch):
    from futureseg.models import predictors

    ratios = []
    real_ratio = predictors.scheduled_sampling_ratio

    def recording_ratio(step, total_steps, *a, **kw):
        ratios.append(real_ratio(step, total_steps, *a, **kw))
        return ratios[-1]

    monkeypatch.setattr(predictors, "scheduled_sampling_ratio", recording_ratio)
    args = _args(caches, tmp_path, "--model", "convlstm",
                 "--model-config", json.dumps({"patch_size": 4, "num_hidden": [8, 8], "filter_size": 3}), "--epochs", "6", "--batch-size", "2", "--lr", "0.01", cache=("val",))
    train_predictor.train(args)
    losses = [float(r["train_loss"]) for r in _rows(tmp_path / "metrics.csv")]
    assert losses[-1] < losses[0], losses
    assert ratios == [1 - s / 6 for s in range(6)], "teacher forcing decays from 1 over the run"
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert saved["model_name"] == "convlstm" and saved["model_config"]["num_hidden"] == [8, 8]


def test_convgru_trains_through_the_same_verb(caches, tmp_path, one_thread):
    # the third predictor needs no flag of its own: its config section goes in as JSON
    args = _args(caches, tmp_path, "--model", "convgru",
                 "--model-config", json.dumps({"patch_size": 4, "num_hidden": [8, 8], "filter_size": 3}),
                 "--epochs", "6", "--batch-size", "2", "--lr", "0.01", cache=("val",))
    train_predictor.train(args)
    losses = [float(r["train_loss"]) for r in _rows(tmp_path / "metrics.csv")]
    assert losses[-1] < losses[0], losses
    from futureseg.models import predictors

    model, saved = predictors.load(tmp_path / "model.pt")
    assert saved["model_name"] == "convgru" and saved["model_config"]["num_hidden"] == [8, 8]
    assert type(model).__name__ == "ConvGRU"


# ---------------------------------------------------------------- resume, signals, configs


def test_killed_run_resumes_at_its_checkpoint_with_the_same_final_weights(caches, tmp_path, one_thread, caplog):
    steps = ["--epochs", "10", "--batch-size", "1", "--max-steps", "12", "--checkpoint-every", "1",
             "--val-limit", "1"]
    reference = _args(caches, tmp_path / "reference", *steps)
    train_predictor.train(reference)

    interrupted = _args(caches, tmp_path / "interrupted", *steps)
    process = subprocess.Popen([*VERB, *_argv(interrupted)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "interrupted" / "checkpoints"
    while not list(checkpoints.glob("*/last.pt")) and process.poll() is None:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = torch.load(_checkpoint(tmp_path / "interrupted"), weights_only=True)["step"]
    assert 0 < killed_at < 12, "the kill came mid-run"
    assert not (tmp_path / "interrupted" / "model.pt").exists()

    caplog.set_level(logging.INFO, logger="futureseg")
    train_predictor.train(interrupted)
    assert f"at step {killed_at} " in caplog.text and "from scratch" not in caplog.text
    _assert_same_weights(_weights(tmp_path / "reference" / "model.pt"),
                         _weights(tmp_path / "interrupted" / "model.pt"))
    # the same rows but for step_seconds, the wall clock's
    untimed = [[{k: v for k, v in row.items() if k != "step_seconds"} for row in _rows(tmp_path / run / "metrics.csv")]
               for run in ("reference", "interrupted")]
    assert untimed[0] == untimed[1]


def test_caches_of_other_data_under_the_same_paths_start_a_new_run(caches, tmp_path, one_thread, caplog):
    # a finished run, then other videos of the same shape written over its caches: the rerun
    # must train on them, not resume (or re-export) the old data's checkpoint
    own = tmp_path / "caches"
    shutil.copytree(caches, own)
    steps = ["--epochs", "1", "--batch-size", "1", "--max-steps", "2", "--val-limit", "1"]
    args = _args(own, tmp_path / "run", *steps)
    train_predictor.train(args)
    first = _weights(tmp_path / "run" / "model.pt")
    for split in ("unlabeled", "train"):
        frames = np.load(own / f"{split}.npy")
        np.save(own / f"{split}.npy", 255 - frames)  # same shape and dtype, other pixels
    caplog.clear()
    caplog.set_level(logging.INFO, logger="futureseg")
    train_predictor.train(args)
    assert "from scratch" in caplog.text, caplog.text[-2000:]
    assert len(list((tmp_path / "run" / "checkpoints").glob("*/last.pt"))) == 2
    assert any(not torch.equal(first[key], value) for key, value in _weights(tmp_path / "run" / "model.pt").items())


def test_sigterm_writes_a_checkpoint_and_exits_non_zero(caches, tmp_path):
    args = _args(caches, tmp_path, "--epochs", "20", "--batch-size", "1", "--checkpoint-every", "1000",
                 "--val-limit", "1")
    process = subprocess.Popen([*VERB, *_argv(args)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "futureseg: step 2:" in line:  # the CLI's log line of step 2
            break
    process.send_signal(signal.SIGTERM)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == 2, rest[-2000:]
    error = rest.strip().splitlines()[-1]
    assert error.startswith("futureseg train-predictor: error: ") and "SIGTERM received at step" in error
    stopped_at = int(error.split("at step ")[1].split(";")[0])
    state = load_checkpoint(_checkpoint(tmp_path))
    assert state["step"] == stopped_at >= 2
    assert not (tmp_path / "model.pt").exists()


def test_a_checkpoint_of_another_config_is_not_picked_up(caches, tmp_path, one_thread, caplog):
    caplog.set_level(logging.INFO, logger="futureseg")
    first = _args(caches, tmp_path, "--batch-size", "1", "--max-steps", "2", "--lr", "0.01", "--val-limit", "1")
    train_predictor.train(first)
    (first_checkpoint,) = (tmp_path / "checkpoints").glob("*/last.pt")

    caplog.clear()
    other = _args(caches, tmp_path, "--batch-size", "1", "--max-steps", "2", "--lr", "0.02", "--val-limit", "1")
    train_predictor.train(other)
    assert "from scratch" in caplog.text and "resuming" not in caplog.text
    folders = sorted(p.parent for p in (tmp_path / "checkpoints").glob("*/last.pt"))
    assert len(folders) == 2

    # a checkpoint of the first config copied where the second looks is refused, not loaded
    other_folder = next(f for f in folders if f != first_checkpoint.parent)
    (other_folder / "last.pt").write_bytes(first_checkpoint.read_bytes())
    with pytest.raises(FuturesegError, match="made with a different config"):
        train_predictor.train(other)

    # settings that do not shape the weights keep the config (and so resume)
    caplog.clear()
    train_predictor.train(_args(caches, tmp_path, "--batch-size", "1", "--max-steps", "2", "--lr", "0.01",
                                "--val-limit", "1", "--checkpoint-every", "7", "--log-every", "0"))
    assert "resuming" in caplog.text and "at step 2 " in caplog.text


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(caches, tmp_path, one_thread,
                                                                          monkeypatch):
    real_build = train_predictor.build_model

    def build_failing_at_step_3(*a, **kw):
        model = real_build(*a, **kw)
        calls = []

        def poison(module, inputs, output):
            if module.training:
                calls.append(1)
                return output * float("nan") if len(calls) == 3 else output

        model.register_forward_hook(poison)
        return model

    monkeypatch.setattr(train_predictor, "build_model", build_failing_at_step_3)
    args = _args(caches, tmp_path, "--epochs", "2", "--batch-size", "1", "--checkpoint-every", "1")
    with pytest.raises(NonFiniteLoss, match="loss is nan at step 3"):
        train_predictor.train(args)
    assert load_checkpoint(_checkpoint(tmp_path))["step"] == 2
    assert not (tmp_path / "model.pt").exists()


# ---------------------------------------------------------------- DDP


def _ddp_worker(rank, world, port, args, shares_folder):
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    real_rank_slice = train_predictor.rank_slice

    def recording_rank_slice(batch, rank, world):
        share = real_rank_slice(batch, rank, world)
        with open(shares_folder / f"rank{rank}_of_{world}", "a") as f:
            f.write(f"{share}\n")
        return share

    real_evaluate, real_loader = train_predictor.evaluate, train_predictor.loader

    def recording_evaluate(model, videos, rows, mean, std, device, batch_size, workers, **kw):
        with open(shares_folder / f"rank{rank}_validation", "a") as f:
            f.write(f"{batch_size} {workers} {torch.get_num_threads()}\n")
        return real_evaluate(model, videos, rows, mean, std, device, batch_size, workers, **kw)

    def recording_loader(videos, batches, workers, pin):
        with open(shares_folder / f"rank{rank}_loader", "a") as f:
            f.write(f"{workers}\n")
        return real_loader(videos, batches, workers, pin)

    # this forked process's copies only
    train_predictor.rank_slice, train_predictor.evaluate = recording_rank_slice, recording_evaluate
    train_predictor.loader = recording_loader
    train_predictor.train(args)


def test_ddp_two_processes_match_one_process(caches, tmp_path, one_thread):
    import socket

    import torch.multiprocessing as mp

    steps = ["--epochs", "2", "--batch-size", "2", "--lr", "0.01"]
    single = _args(caches, tmp_path / "single", *steps)
    train_predictor.train(single)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # forked, not spawned: the workers start with torch already imported (seconds saved);
    # each joins a 2-process gloo group through setup_distributed, as under torchrun
    ddp = _args(caches, tmp_path / "ddp", *steps, "--loader-workers", "2", "--threads", "2")
    mp.start_processes(_ddp_worker, args=(2, port, ddp, tmp_path), nprocs=2, start_method="fork")
    # each rank validates in its share of a global batch, and runs on its share of the
    # threads and of the loader workers
    for r in range(2):
        assert set((tmp_path / f"rank{r}_validation").read_text().splitlines()) == {"1 1 1"}
        assert set((tmp_path / f"rank{r}_loader").read_text().splitlines()) == {"1"}
    # each rank trained on its own half of every global batch
    shares = [(tmp_path / f"rank{r}_of_2").read_text().split("\n")[:-1] for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 4
    for first, second in zip(*shares):
        assert len(json.loads(first)) == len(json.loads(second)) == 1 and first != second

    one, two = _rows(tmp_path / "single" / "metrics.csv"), _rows(tmp_path / "ddp" / "metrics.csv")
    assert [r["step"] for r in one] == [r["step"] for r in two] == ["1", "2", "3", "4"]
    for a, b in zip(one, two):
        for key in ("train_loss", "val_loss", "val_mse", "val_ssim_f21"):
            if a[key]:
                assert float(a[key]) == pytest.approx(float(b[key]), abs=1e-5), key
    _assert_same_weights(_weights(tmp_path / "single" / "model.pt"), _weights(tmp_path / "ddp" / "model.pt"),
                         atol=1e-5)


def test_gpus_starts_one_process_per_gpu_under_torchrun():
    argv = ["train-predictor", "--cache", "a.npy", "--gpus", "4", "--threads", "16"]
    for gpus in (0, 1):
        assert train_predictor.rank_launch(gpus, argv, 16, environ={}) is None
    for rank_variable in ("LOCAL_RANK", "WORLD_SIZE"):  # a rank of torchrun trains itself
        assert train_predictor.rank_launch(4, argv, 16, environ={rank_variable: "0"}) is None
    command, environ = train_predictor.rank_launch(4, argv, 16, environ={"PATH": "/bin"})
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4",
                           "--signals-to-handle=SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"]
    assert command[6:] == ["-m", "futureseg", *argv]
    assert environ == {"PATH": "/bin", "OMP_NUM_THREADS": "4"}
    with pytest.raises(ConfigError, match="^--gpus 2: .*command line"):
        train_predictor.rank_launch(2, None, 0, environ={})


def test_each_rank_takes_its_share_of_threads_and_loader_workers():
    assert [train_predictor.rank_threads(t, 4) for t in (0, 1, 4, 16, 18)] == [0, 1, 1, 4, 4]
    assert [train_predictor.rank_workers(w, 2) for w in (0, 1, 2, 5)] == [0, 1, 1, 2]


def test_gpus_runs_ranks_through_the_verb(caches, tmp_path):
    """`--gpus 2` on CPU: the verb re-executes itself under torchrun, two gloo ranks train
    (as with FUTURESEG_ALLOW_CPU=1 in a GPU job whose GPUs torch cannot use)."""
    args = _args(caches, tmp_path, "--epochs", "1", "--batch-size", "2", "--max-steps", "2", "--val-limit", "2",
                 "--log-every", "0", "--threads", "2")
    environ = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    run = subprocess.run([*VERB, *_argv(args), "--gpus", "2"], capture_output=True, text=True, timeout=300,
                         env=environ)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stderr.count("device cpu") == 2, run.stderr[-3000:]  # one line per rank
    assert [r["step"] for r in _rows(tmp_path / "metrics.csv")] == ["2"]
    assert load_checkpoint(tmp_path / "model.pt")["step"] == 2


# ---------------------------------------------------------------- bad settings


def test_bad_inputs_are_named(caches, tmp_path):
    with pytest.raises(ConfigError, match="^--batch-size 9: larger than the 5 training videos"):
        train_predictor.train(_args(caches, tmp_path, "--batch-size", "9"))
    hidden = caches / "hidden.npy"
    with pytest.raises(DataError, match=rf"^{hidden}: cache holds 11 frames per video, training needs 22"):
        train_predictor.train(_args(caches, tmp_path, cache=("train", "hidden")))
    with pytest.raises(ConfigError, match="^--epochs 0"):
        train_predictor.train(_args(caches, tmp_path, "--epochs", "0"))
