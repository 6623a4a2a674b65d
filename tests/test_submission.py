"""Stage 5 outputs: the submission tensor, its checker, and the runs' comparison table."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from futureseg.evaluate import gather_scores, check_submission, submission
from futureseg import cli
from futureseg.core import data
from futureseg.core.errors import ConfigError, FuturesegError
from futureseg.core.io import save_array

SIZE = (8, 12)
HIDDEN_IDS = [15000, 15001, 15002, 15003]


@pytest.fixture
def hidden_root(tmp_path):
    """A dataset root with only a hidden split: 4 videos of 11 flat-colour frames."""
    root = tmp_path / "dataset"
    for video_id in HIDDEN_IDS:
        folder = root / "hidden" / f"video_{video_id}"
        folder.mkdir(parents=True)
        for index in range(data.N_INPUT):
            Image.fromarray(np.full((*SIZE, 3), index * 20, np.uint8)).save(folder / f"image_{index}.png")
    return root


@pytest.fixture
def masks_hidden(tmp_path):
    """Predicted masks of the hidden videos, stored in a shuffled id order."""
    rng = np.random.default_rng(3)
    masks = rng.integers(0, data.NUM_CLASSES, (len(HIDDEN_IDS), *SIZE)).astype(np.uint8)
    order = [2, 0, 3, 1]
    path = tmp_path / "masks_hidden.npy"
    save_array(path, masks[order], [HIDDEN_IDS[i] for i in order])
    return path, masks  # masks in ascending id order


def test_submission_round_trip(tmp_path, hidden_root, masks_hidden):
    path, masks = masks_hidden
    out = tmp_path / "results" / "submission.pt"
    submission.make_submission(path, out)
    tensor = torch.load(out, weights_only=True)
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.uint8
    assert tuple(tensor.shape) == (len(HIDDEN_IDS), *SIZE)
    np.testing.assert_array_equal(tensor.numpy(), masks)  # rows sorted by id
    sidecar = json.loads(out.with_suffix(".json").read_text())
    assert sidecar["ids"] == HIDDEN_IDS
    # the checker accepts what submission writes, given the root or the hidden/ folder
    assert submission.check_submission(out, hidden_root) == []
    assert submission.check_submission(out, hidden_root / "hidden") == []
    assert not list(out.parent.glob(".*.tmp"))


def test_submission_int64_and_hidden_check_before_writing(tmp_path, hidden_root, masks_hidden):
    path, masks = masks_hidden
    out = tmp_path / "sub64.pt"
    submission.make_submission(path, out, dtype="int64", hidden=hidden_root)
    tensor = torch.load(out, weights_only=True)
    assert tensor.dtype == torch.int64
    np.testing.assert_array_equal(tensor.numpy(), masks)
    assert submission.check_submission(out, hidden_root) == []
    # masks of only 3 of the 4 hidden videos are refused before anything is written
    short = tmp_path / "short.npy"
    save_array(short, masks[:3], HIDDEN_IDS[:3])
    with pytest.raises(FuturesegError, match=re.escape(str(short)) + ".*hidden split has 4"):
        submission.make_submission(short, tmp_path / "short.pt", hidden=hidden_root)
    assert not (tmp_path / "short.pt").exists()
    with pytest.raises(ConfigError, match="--dtype"):
        submission.make_submission(path, tmp_path / "x.pt", dtype="float32")


def test_submission_refuses_bad_masks(tmp_path):
    bad = tmp_path / "bad.npy"
    save_array(bad, np.full((2, *SIZE), 60, np.uint8), [1, 2])
    with pytest.raises(FuturesegError, match=re.escape(str(bad)) + ".*class ids 60"):
        submission.make_submission(bad, tmp_path / "s.pt")
    save_array(bad, np.zeros((2, *SIZE), np.uint8), [1, 1])
    with pytest.raises(FuturesegError, match="duplicated ids"):
        submission.make_submission(bad, tmp_path / "s.pt")
    bad.with_suffix(".json").unlink()
    with pytest.raises(FuturesegError, match=re.escape(str(bad.with_suffix(".json"))) + ": the ids sidecar"):
        submission.make_submission(bad, tmp_path / "s.pt")


def write_submission(path: Path, tensor, ids) -> Path:
    """A submission file written by hand, to break it in one way at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(tensor, path)
    path.with_suffix(".json").write_text(json.dumps({"ids": list(ids)}))
    return path


GOOD = torch.zeros((len(HIDDEN_IDS), *SIZE), dtype=torch.uint8)


# (name, tensor, sidecar ids, expected message)
BROKEN = [
    ("wrong_shape", torch.zeros((4, 8, 13), dtype=torch.uint8), HIDDEN_IDS, "tensor frames are 8x13, the hidden frames are 8x12"),
    ("not_3d", torch.zeros((4, 96), dtype=torch.uint8), HIDDEN_IDS, "tensor is 2-D with shape (4, 96), expected 3-D"),
    ("float", GOOD.float(), HIDDEN_IDS, "tensor dtype is torch.float32, expected an integer type"),
    ("wrong_order", GOOD, HIDDEN_IDS[::-1], "sidecar ids are the hidden ids but not in ascending order"),
    ("wrong_count", GOOD[:3], HIDDEN_IDS[:3], "tensor holds 3 videos, the hidden split has 4"),
    ("class_out_of_range", GOOD.long() + 49, HIDDEN_IDS, "class ids range 49…49, expected 0…48"),
    ("negative_class", GOOD.long() - 1, HIDDEN_IDS, "class ids range -1…-1, expected 0…48"),
    ("foreign_ids", GOOD, [15000, 15001, 15002, 16000], "1 ids not in the hidden split (first [16000])"),
]


@pytest.mark.parametrize("name, tensor, ids, message", BROKEN, ids=[b[0] for b in BROKEN])
def test_check_submission_names_each_problem(tmp_path, hidden_root, capsys, name, tensor, ids, message):
    path = write_submission(tmp_path / f"{name}.pt", tensor, ids)
    problems = submission.check_submission(path, hidden_root)
    assert any(message in p for p in problems), problems
    assert all(p.startswith(str(path)) or p.startswith(str(path.with_suffix(".json"))) for p in problems)
    # the verb prints every problem on its own line and fails
    with pytest.raises(FuturesegError, match="not a valid submission"):
        check_submission.main(parse(check_submission, [str(path), "--hidden", str(hidden_root)]))
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == len(problems)


def test_check_submission_other_failures(tmp_path, hidden_root):
    assert "does not exist" in submission.check_submission(tmp_path / "none.pt", hidden_root)[0]
    pickled = tmp_path / "pickled.pt"
    torch.save({"masks": GOOD, "fn": Path("x")}, pickled)  # a Path object is not weights-only
    assert "weights_only" in submission.check_submission(pickled, hidden_root)[0]
    as_dict = write_submission(tmp_path / "dict.pt", {"masks": GOOD}, HIDDEN_IDS)
    assert "holds a dict, expected a torch tensor" in submission.check_submission(as_dict, hidden_root)[0]
    no_sidecar = write_submission(tmp_path / "nosidecar.pt", GOOD, HIDDEN_IDS)
    no_sidecar.with_suffix(".json").unlink()
    assert any("sidecar is missing" in p for p in submission.check_submission(no_sidecar, hidden_root))
    with pytest.raises(FuturesegError, match="neither a hidden/ split folder"):
        submission.check_submission(no_sidecar, tmp_path)


def parse(module, argv):
    import argparse

    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(argv)


def run_cli(monkeypatch, argv):
    """The real `futureseg` entry point with this stage's verbs registered."""
    monkeypatch.setattr(cli, "VERB_MODULES", tuple(m for m in cli.VERB_MODULES if m.startswith("evaluate.")))
    return cli.main(argv)


def test_submission_and_check_through_the_cli(tmp_path, hidden_root, masks_hidden, monkeypatch, capsys):
    path, _ = masks_hidden
    out = tmp_path / "results" / "submission.pt"
    assert run_cli(monkeypatch, ["submission", "--masks", str(path), "--out", str(out), "--hidden", str(hidden_root)]) == 0
    assert run_cli(monkeypatch, ["check-submission", str(out), "--hidden", str(hidden_root / "hidden")]) == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"OK: {out} is a (4, 8, 12) tensor")
    bad = write_submission(tmp_path / "bad.pt", GOOD.float(), HIDDEN_IDS[::-1])
    assert run_cli(monkeypatch, ["check-submission", str(bad), "--hidden", str(hidden_root)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert any("expected an integer type" in line for line in err)
    assert any("not in ascending order" in line for line in err)
    assert err[-1].startswith(f"futureseg check-submission: error: {bad}: 2 problem(s)")


def write_scores(folder: Path, pipeline: float, oracle: float | None = None, n: int = 10) -> Path:
    scores = {"n_videos": n, "pipeline": {"iou": pipeline, "iou_micro": 0.9, "pixel_acc": 0.95}, "copy_last": {"iou": 0.1, "iou_micro": 0.7, "pixel_acc": 0.8}}
    if oracle is not None:
        scores["oracle"] = {"iou": oracle, "iou_micro": 0.99, "pixel_acc": 0.995}
    (folder / "eval").mkdir(parents=True)
    (folder / "eval" / "scores.json").write_text(json.dumps(scores))
    return folder


def test_gather_scores_table(tmp_path, monkeypatch):
    simvp = write_scores(tmp_path / "simvp", 0.41234, 0.8)
    convlstm = write_scores(tmp_path / "convlstm", 0.3, n=12)
    text = gather_scores.run([simvp, convlstm], tmp_path / "table.md")
    assert (tmp_path / "table.md").read_text() == text
    lines = text.splitlines()
    assert lines[0] == "| run | pipeline IoU | oracle IoU | copy-last IoU | pipeline micro IoU | pipeline pixel acc | val videos |"
    assert lines[2] == "| simvp | 0.4123 | 0.8000 | 0.1000 | 0.9000 | 0.9500 | 10 |"
    assert lines[3] == "| convlstm | 0.3000 | – | 0.1000 | 0.9000 | 0.9500 | 12 |"  # no oracle in that run
    assert len(lines) == 4
    labelled = gather_scores.run([simvp, convlstm], tmp_path / "t2.md", labels=["A", "B"])
    assert [line.split(" | ")[0] for line in labelled.splitlines()[2:]] == ["| A", "| B"]
    with pytest.raises(ConfigError, match="--labels"):
        gather_scores.run([simvp, convlstm], tmp_path / "t3.md", labels=["A"])
    with pytest.raises(FuturesegError, match=re.escape(str(tmp_path / "missing" / "eval" / "scores.json"))):
        gather_scores.run([simvp, tmp_path / "missing"], tmp_path / "t4.md")
    assert not (tmp_path / "t4.md").exists()
    # the verb, with labels given as a comma list
    args = parse(gather_scores, [str(simvp), str(convlstm), "--out", str(tmp_path / "t5.md"), "--labels", "x,y"])
    gather_scores.main(args)
    assert "| x | 0.4123" in (tmp_path / "t5.md").read_text()


# ---------------------------------------------------------------- rule submission: checked against the hidden split


def submission_command(workdir: Path, override: dict | None = None) -> str:
    """The shell line a dry run gives rule submission under the tests' config (+ `override`)."""
    from pipeline_helpers import merged, snakemake, tiny_config, write_config

    write_config(workdir, merged(tiny_config(), override or {}))
    out = snakemake(workdir, "--dry-run", "--printshellcmds", "results/submission.pt").stdout
    found = ["futureseg submission " + line.split("futureseg submission ", 1)[1] for line in out.splitlines()
             if "futureseg submission " in line]
    assert len(found) == 1, out[-3000:]
    return found[0]


def test_the_submission_rule_checks_the_hidden_split_and_writes_the_configured_dtype(tmp_path, masks_hidden):
    import subprocess
    import sys

    line = submission_command(tmp_path)
    assert " --hidden resources/synthetic/hidden --dtype uint8 --out results/submission.pt " in line
    line = submission_command(tmp_path, {"eval": {"submission_dtype": "int64"}})
    assert " --dtype int64 " in line
    # Run that very line on inputs made by hand: scores.json naming route motion, its hidden masks
    # (4 videos, 8x12) and a hidden split of the same 4 videos where the dataset should be.
    path, masks = masks_hidden
    results = tmp_path / "results"
    (results / "motion").mkdir(parents=True)
    (results / "eval").mkdir()
    (results / "logs").mkdir()
    save_array(results / "motion" / "masks_hidden.npy", *reversed(read_rows(path)))
    (results / "eval" / "scores.json").write_text(json.dumps({"submitted_route": "motion"}))
    hidden = tmp_path / "resources" / "synthetic" / "hidden"
    for video_id in HIDDEN_IDS:
        folder = hidden / f"video_{video_id}"
        folder.mkdir(parents=True)
        for index in range(data.N_INPUT):
            Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(folder / f"image_{index}.png")
    command = line.replace("futureseg ", f"{sys.executable} -m futureseg ", 1)

    def run():
        return subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True)

    done = run()
    assert done.returncode == 0, (results / "logs" / "submission.log").read_text()
    tensor = torch.load(results / "submission.pt", weights_only=True)
    assert tensor.dtype == torch.int64  # the config's dtype reached the file
    np.testing.assert_array_equal(tensor.numpy(), masks)
    assert json.loads((results / "submission.json").read_text())["dtype"] == "int64"
    # A hidden split that differs (one video gone, one other): the rule's line fails with one
    # line naming the differences, and leaves neither file (Snakemake removes the previous
    # run's outputs, both declared, before the job: as here)
    (results / "submission.pt").unlink()
    (results / "submission.json").unlink()
    (hidden / f"video_{HIDDEN_IDS[-1]}").rename(hidden / "video_16000")
    done = run()
    assert done.returncode == 2
    log = (results / "logs" / "submission.log").read_text().splitlines()
    assert len(log) == 1, log
    assert log[0].startswith(f"futureseg submission: error: results/motion/masks_hidden.npy: does not fit the hidden "
                             f"split resources/synthetic/hidden: ")
    assert "1 hidden videos missing (first [16000])" in log[0] and f"1 ids not in the hidden split (first [{HIDDEN_IDS[-1]}])" in log[0]
    assert sorted(p.name for p in results.iterdir()) == ["eval", "logs", "motion"]


def read_rows(path: Path):
    """(ids, masks) of an array with its sidecar."""
    from futureseg.core.io import load_array

    array, meta = load_array(path)
    return meta["ids"], array
