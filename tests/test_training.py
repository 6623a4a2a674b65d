"""`training.fit`, the one training loop, on a model small enough to reason about: what it
logs, and the checkpoints it refuses."""

import csv

import pytest
import torch

from futureseg.core.errors import FuturesegError
from futureseg.core.training import (adamw_one_cycle, checkpoint_path, epoch_order, fingerprint, fit, load_checkpoint,
                                     restore_rng_state, rng_state, save_checkpoint)

SETTINGS = {"what": "a line through two points"}


def run(tmp_path, log_every=0, total_steps=6):
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    optimizer, scheduler = adamw_one_cycle(model, 0.05, 0.0, total_steps)
    x, y = torch.tensor([[0.0], [1.0], [2.0], [3.0]]), torch.tensor([[1.0], [3.0], [5.0], [7.0]])

    def step_losses(epoch, batch, step, total):
        loss = torch.nn.functional.mse_loss(model(x[batch]), y[batch])
        return {"loss": loss, "half": loss / 2}

    fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=tmp_path / "ckpt",
        metrics_out=tmp_path / "metrics.csv", out=tmp_path / "model.pt", model_file={"kind": "line"}, epochs=3,
        epoch_batches=lambda epoch: epoch_order(4, 2, 0, epoch), total_steps=total_steps, checkpoint_every=100,
        step_losses=step_losses, validate=lambda: {"val_loss": float(step_losses(0, [0, 1, 2, 3], 0, 0)["loss"].detach())},
        log_every=log_every)
    with open(tmp_path / "metrics.csv", newline="") as f:
        return model, optimizer, scheduler, list(csv.DictReader(f))


def test_epoch_rows_average_every_loss_and_window_rows_come_between(tmp_path):
    _, _, _, rows = run(tmp_path / "epochs")
    assert [(r["step"], r["epoch"]) for r in rows] == [("2", "1"), ("4", "2"), ("6", "3")]
    for row in rows:
        assert float(row["train_half"]) == pytest.approx(float(row["train_loss"]) / 2) and row["val_loss"]
    _, _, _, rows = run(tmp_path / "windows", log_every=1)
    # a training-loss row after every step that ends no epoch, then the epoch's row
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5", "6"]
    assert [bool(r["val_loss"]) for r in rows] == [False, True] * 3


def test_step_seconds_is_the_mean_wall_time_of_a_step_without_validation(tmp_path, monkeypatch):
    import time

    # each step sleeps 30 ms, each validation 300 ms: a row's step_seconds sees the steps only
    real_sleep, sleeps = time.sleep, {"step": 0.03, "val": 0.3}
    model = torch.nn.Linear(1, 1)
    optimizer, scheduler = adamw_one_cycle(model, 0.1, 0.0, 4)

    def step_losses(epoch, batch, step, total):
        real_sleep(sleeps["step"])
        return {"loss": model(torch.ones(1, 1)).pow(2).mean()}

    def validate():
        real_sleep(sleeps["val"])
        return {"val_loss": 0.0}

    fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=tmp_path / "ckpt",
        metrics_out=tmp_path / "metrics.csv", out=tmp_path / "model.pt", model_file={"kind": "line"}, epochs=2,
        epoch_batches=lambda epoch: epoch_order(4, 2, 0, epoch), total_steps=4, checkpoint_every=100,
        step_losses=step_losses, validate=validate)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2
    assert all(0.03 <= float(row["step_seconds"]) < 0.3 for row in rows), rows


def test_checkpoints_of_another_loop_are_refused_by_name(tmp_path):
    model, optimizer, scheduler, _ = run(tmp_path)
    fp = fingerprint({**SETTINGS, "total_steps": 6})
    path = checkpoint_path(tmp_path / "ckpt", fp)
    old = {"fingerprint": fp, "settings": SETTINGS, "step": 2, "model": model.state_dict(),
           "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": rng_state(),
           "tally": {"loss": 1.0, "steps": 2}, "val_metrics": {}}
    save_checkpoint(path, old)
    with pytest.raises(FuturesegError, match="another futureseg version .*running sums"):
        run(tmp_path)
    save_checkpoint(path, {k: v for k, v in old.items() if k != "scheduler"})
    with pytest.raises(FuturesegError, match=r"another futureseg version \(no scheduler\)"):
        run(tmp_path)


def test_a_truncated_checkpoint_is_moved_aside_and_the_run_starts_over(tmp_path, caplog):
    fresh, _, _, _ = run(tmp_path / "fresh")
    run(tmp_path)
    path = checkpoint_path(tmp_path / "ckpt", fingerprint({**SETTINGS, "total_steps": 6}))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    half = path.read_bytes()
    corrupt = path.with_name("last.pt.corrupt")
    corrupt.write_bytes(b"an older corrupt checkpoint")
    with caplog.at_level("WARNING", logger="futureseg"):
        model, _, _, rows = run(tmp_path)
    # trained from step 0 to the end: every epoch's row, the weights of a fresh run
    assert [r["step"] for r in rows] == ["2", "4", "6"]
    assert torch.equal(model.weight, fresh.weight) and torch.equal(model.bias, fresh.bias)
    assert torch.load(path, weights_only=True)["step"] == 6
    assert torch.load(tmp_path / "model.pt", weights_only=True)["step"] == 6
    assert corrupt.read_bytes() == half, "the truncated file replaced the older .corrupt"
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, caplog.text
    text = warnings[0].getMessage()
    assert str(path) in text and "truncated" in text and "starts over" in text and "\n" not in text, text


# ---------------------------------------------------------------- DDP


def _two_rank_fit(rank, port, folder):
    import datetime
    import time

    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                            timeout=datetime.timedelta(seconds=30))
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(1, 1)
        optimizer, scheduler = adamw_one_cycle(model, 0.05, 0.0, 2)

        def validate():
            # torchmetrics' sync in miniature: a collective every rank must join; rank 0 then
            # lingers, as a rank busy logging does, before it writes metrics.csv
            total = torch.ones(1)
            dist.all_reduce(total)
            if rank == 0:
                time.sleep(1.0)
            return {"val_ranks": float(total)}

        fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=folder / "ckpt",
            metrics_out=folder / "metrics.csv", out=folder / "model.pt", model_file={"kind": "line"}, epochs=1,
            epoch_batches=lambda epoch: epoch_order(4, 2, 0, epoch), total_steps=2, checkpoint_every=100,
            step_losses=lambda epoch, batch, step, total: {"loss": model(torch.ones(1, 1)).pow(2).mean()},
            validate=validate, rank=rank, world=2)
        dist.barrier()  # a rank left validating alone would fail here, or time out
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_end_together_when_the_first_csv_row_is_the_last_step(tmp_path):
    """Only rank 0 writes metrics.csv; a rank that decided from the file after the loop
    validated a second time, alone, and its collective never met a partner."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    mp.start_processes(_two_rank_fit, args=(port, tmp_path), nprocs=2, start_method="fork")
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["val_ranks"]) for r in rows] == [("2", "2.0")]


# ---------------------------------------------------------------- CUDA random state


class FakeCuda:
    """torch.cuda's random-state functions over `devices` visible devices, on any machine:
    each device's state is a tensor filled with its index."""

    def __init__(self, devices: int):
        self.states = [torch.full((8,), i, dtype=torch.uint8) for i in range(devices)]

    def install(self, monkeypatch):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        for name in ("get_rng_state", "set_rng_state", "get_rng_state_all", "set_rng_state_all"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        return self

    def get_rng_state(self, device="cuda"):  # the current device: 0, as on rank 0
        return self.states[0].clone()

    def set_rng_state(self, new_state, device="cuda"):
        self.states[0] = new_state.clone()

    def get_rng_state_all(self):
        return [s.clone() for s in self.states]

    def set_rng_state_all(self, new_states):
        for i, new_state in enumerate(new_states):
            self.states[i] = new_state.clone()  # IndexError past the visible devices


def test_a_checkpoint_of_two_gpus_resumes_on_one(tmp_path, monkeypatch):
    two = FakeCuda(2).install(monkeypatch)
    two.states[0] = torch.full((8,), 7, dtype=torch.uint8)  # rank 0's device, advanced by training
    save_checkpoint(tmp_path / "last.pt", {"fingerprint": "f", "model": {}, "rng": rng_state()})
    one = FakeCuda(1).install(monkeypatch)
    restore_rng_state(load_checkpoint(tmp_path / "last.pt")["rng"])
    assert one.states[0].tolist() == [7] * 8


def test_older_checkpoints_with_every_devices_state_still_restore(monkeypatch):
    one = FakeCuda(1).install(monkeypatch)
    state = rng_state()
    state["cuda"] = [torch.full((8,), 7, dtype=torch.uint8), torch.full((8,), 1, dtype=torch.uint8)]
    restore_rng_state(state)
    assert one.states[0].tolist() == [7] * 8
    state["cuda"] = []  # saved where there was no CUDA
    restore_rng_state(state)
    assert one.states[0].tolist() == [7] * 8


def run_with_patience(tmp_path, val_ious, patience, epochs=6):
    """fit on the line with validate() returning `val_ious` in turn (the first: the untrained
    model's); returns the exported model file, the CSV rows and the steps trained."""
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1)
    total_steps = 2 * epochs
    optimizer, scheduler = adamw_one_cycle(model, 0.05, 0.0, total_steps)
    scores, trained = iter(val_ious), []

    def step_losses(epoch, batch, step, total):
        trained.append(step)
        return {"loss": model(torch.ones(1, 1)).pow(2).mean()}

    fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=tmp_path / "ckpt",
        metrics_out=tmp_path / "metrics.csv", out=tmp_path / "model.pt", model_file={"kind": "line"}, epochs=epochs,
        epoch_batches=lambda epoch: epoch_order(4, 2, 0, epoch), total_steps=total_steps, checkpoint_every=100,
        step_losses=step_losses, validate=lambda: {"val_iou": next(scores)}, keep_best="val_iou", patience=patience)
    with open(tmp_path / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return torch.load(tmp_path / "model.pt", weights_only=True), rows, trained


def test_a_flat_val_metric_stops_training_after_patience_epochs_exporting_the_untrained_model(tmp_path):
    torch.manual_seed(0)
    untrained = torch.nn.Linear(1, 1).state_dict()
    # the untrained model scores 0.5 (a forecaster's prior) and training never beats it
    model, rows, trained = run_with_patience(tmp_path, [0.5, 0.5, 0.4, 0.5, 0.5, 0.5, 0.5], patience=2)
    assert trained == [0, 1, 2, 3]  # 2 epochs of 2 steps, not 6
    assert [r["step"] for r in rows] == ["2", "4"]
    assert model["step"] == 0 and model["last_step"] == 4 and model["val_metrics"] == {"val_iou": 0.5}
    assert all(torch.equal(model["model"][k], v) for k, v in untrained.items())


def test_each_better_epoch_restarts_the_patience(tmp_path):
    model, rows, trained = run_with_patience(tmp_path, [0.1, 0.2, 0.15, 0.3, 0.25, 0.3, 0.9], patience=2)
    # best at epoch 3 (step 6), then two epochs without beating it (0.3 ties): stop at step 10
    assert len(trained) == 10 and rows[-1]["step"] == "10"
    assert model["step"] == 6 and model["val_metrics"] == {"val_iou": 0.3}


def test_a_run_stopped_by_its_patience_does_not_train_on_when_rerun(tmp_path):
    first, _, _ = run_with_patience(tmp_path, [0.5, 0.4, 0.4], patience=2)
    (tmp_path / "model.pt").unlink()
    # the checkpoint holds the best epoch's step: no step, no validation (an empty list of scores)
    again, rows, trained = run_with_patience(tmp_path, [], patience=2)
    assert trained == [] and [r["step"] for r in rows] == ["2", "4"]
    assert again["step"] == first["step"] == 0 and again["last_step"] == 4


def test_patience_needs_the_metric_it_watches(tmp_path):
    model = torch.nn.Linear(1, 1)
    optimizer, scheduler = adamw_one_cycle(model, 0.05, 0.0, 2)
    with pytest.raises(ValueError, match="patience needs keep_best"):
        fit(model=model, optimizer=optimizer, scheduler=scheduler, settings=SETTINGS, checkpoints=tmp_path,
            metrics_out=tmp_path / "m.csv", out=tmp_path / "model.pt", model_file={}, epochs=1,
            epoch_batches=lambda epoch: [[0]], total_steps=2, checkpoint_every=1, step_losses=None,
            validate=dict, patience=1)
