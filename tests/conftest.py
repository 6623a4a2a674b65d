import shutil

import pytest

from futureseg.data.synth import generate_dataset

TINY_COUNTS = {"train": 3, "val": 2, "unlabeled": 2, "hidden": 2}
TINY_SIZE = (32, 48)


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A synthetic Dataset_Student at 32×48; read-only, shared by the whole session."""
    root = tmp_path_factory.mktemp("tiny") / "dataset"
    generate_dataset(root, TINY_COUNTS, *TINY_SIZE, seed=1)
    return root


@pytest.fixture
def dataset_copy(tiny_dataset, tmp_path):
    """A private copy of the tiny dataset that a test may break."""
    root = tmp_path / "dataset"
    shutil.copytree(tiny_dataset, root)
    return root


@pytest.fixture(scope="session")
def tiny_chain(tmp_path_factory):
    """The folder of one local run of the whole chain on the tests' config (.test/config.yaml
    over config.yaml), run once a session: test_pipeline reads it, test_slurm_pipeline
    compares its SLURM run with it. Read-only: a test that reruns anything copies it."""
    from pipeline_helpers import snakemake, tiny_config, write_config

    workdir = tmp_path_factory.mktemp("chain")
    write_config(workdir, tiny_config())
    snakemake(workdir, "--cores", "2")
    return workdir


@pytest.fixture(scope="session", autouse=True)
def slurm_lane(request, tmp_path_factory):
    """test_slurm_pipeline's SLURM runs (its SlurmLane), started as the session starts when one
    of its tests is in the session and a SLURM cluster answers; None otherwise (that module
    then starts them itself, or skips). Their jobs run on the cluster beside the other tests
    instead of after them: ~4 of the suite's minutes (767 s -> 526 s here, with the lazy verb imports)."""
    if not any("lane" in item.fixturenames for item in request.session.items):
        yield None
        return
    from test_slurm_cluster import slurm_cluster_problem
    from test_slurm_pipeline import SlurmLane

    if slurm_cluster_problem():
        yield None
        return
    lane = SlurmLane(tmp_path_factory.mktemp("slurm_lane"))
    yield lane
    lane.stop()  # a session that ended before reading it leaves no jobs behind


@pytest.fixture
def one_torch_thread():
    """torch on one thread for the test: on tiny tensors a second intra-op thread only adds
    synchronisation, and on a busy machine it makes such tests ~10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
