"""config.yaml, its schema, the model config dataclasses and the verbs' flags name the same
settings and allow the same values: a default lives in one place, and nothing drifts."""

import argparse
import dataclasses
import json
from pathlib import Path

import pytest
import yaml

from futureseg.forecast import train_direct, train_forecaster
from futureseg.predict import train_predictor
from futureseg.segment import pseudo_label, segment, train_segmenter
from futureseg.models import predictors
from futureseg.models.mask_forecaster import MaskForecasterConfig
from futureseg.models.maskrcnn_torchvision import BACKBONES, NORMS, MaskRCNNConfig
from futureseg.models.predictors.simvp import TRANSLATORS
from futureseg.models.segmenters import BACKENDS, DETECTRON2_DEPTHS, MASKRCNN_FIELDS
from futureseg.models.enet import ENetConfig
from futureseg.models.unet import UNetConfig

REPO = Path(__file__).resolve().parents[1]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]


def fields(config_class) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def schema_section(*path) -> dict:
    node = SCHEMA[path[0]]
    for key in path[1:]:
        node = node["properties"][key]
    return node


def parse(verb, argv):
    parser = argparse.ArgumentParser()
    verb.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


@pytest.mark.parametrize("kind", ["predictor", "forecaster"])
def test_every_predictor_has_its_section_and_no_other(kind):
    assert set(schema_section(kind, "model")["enum"]) == set(predictors.names())
    sections = {k for k, v in CONFIG[kind].items() if isinstance(v, dict)}
    assert sections == set(predictors.names()) or kind == "forecaster" and sections <= set(predictors.names())
    for name in sections:
        # the schema names exactly the keys config.yaml sets, and requires them all
        schema = schema_section(kind, name)
        assert set(schema["properties"]) == set(schema["required"]) == set(CONFIG[kind][name]), (kind, name)


@pytest.mark.parametrize("name", predictors.names())
def test_predictor_sections_are_config_fields(name):
    own = fields(predictors.module(name).Config) - {"in_shape"}
    assert set(CONFIG["predictor"][name]) <= own, name
    forecaster_own = fields(MaskForecasterConfig) - {"size", "core", "core_config"}
    if name in CONFIG["forecaster"]:
        assert set(CONFIG["forecaster"][name]) <= own | forecaster_own, name


def test_allowed_values_agree():
    for kind in ("predictor", "forecaster"):
        assert schema_section(kind, "simvp", "translator")["enum"] == list(TRANSLATORS)
    maskrcnn = schema_section("segmenter", "maskrcnn")["properties"]
    assert maskrcnn["backbone"]["enum"] == list(BACKBONES)
    assert maskrcnn["backend"]["enum"] == list(BACKENDS)
    assert set(DETECTRON2_DEPTHS) <= set(BACKBONES)
    assert set(NORMS) == {"bn", "gn"}


def test_segmenter_sections_are_config_fields_or_training_settings():
    training = {"epochs", "batch_size", "lr", "weight_decay", "soft_iou_weight", "background_weight"}
    for name, config_class in (("unet", UNetConfig), ("enet", ENetConfig)):
        section = set(CONFIG["segmenter"][name])
        # the model's keys are its config's fields and the trainer's flags for them, the rest training's
        assert section - fields(config_class) == training, name
        assert section & fields(config_class) == set(train_segmenter.PIXEL_MODEL_FLAGS[name]), name
        schema = schema_section("segmenter", name)
        assert set(schema["properties"]) == set(schema["required"]) == section, name
    maskrcnn = set(CONFIG["segmenter"]["maskrcnn"])
    model_keys = maskrcnn & set(MASKRCNN_FIELDS["torchvision"])
    assert maskrcnn - model_keys == {"backend", "epochs", "batch_size", "lr", "weight_decay", "warmup_steps",
                                     "min_fragment", "score_threshold"}
    for backend, mapping in MASKRCNN_FIELDS.items():
        assert set(mapping) == set(MASKRCNN_FIELDS["torchvision"]), backend
    assert set(MASKRCNN_FIELDS["torchvision"].values()) <= fields(MaskRCNNConfig)


def test_one_class_per_object_is_a_mask_flag_not_a_training_setting():
    # segmenter's own keys beside the model sections: the run's (seed, checkpoint_every), how
    # each object gets one class and the track vote (flags of the verbs that paint masks, never
    # of the segmenter's training), and the object classifier's section (its own trainer's)
    section = CONFIG["segmenter"]
    schema = schema_section("segmenter")
    assert set(schema["properties"]) == set(schema["required"]) == set(section)
    assert set(section) - {"unet", "enet", "maskrcnn", "object_classifier", "temporal", "recurrent"} == {
        "model", "seed", "checkpoint_every", "object_class", "track_vote"}
    assert schema["properties"]["object_class"]["enum"] == ["classifier", "vote", "none"]
    assert schema["properties"]["track_vote"] == {"type": "boolean"} and isinstance(section["track_vote"], bool)
    votes = parse(pseudo_label, ["--model", "m", "--cache", "c", "--out", "o", "--frames", 11, "--object-vote",
                                 "--track-vote"])
    assert votes.object_vote and votes.track_vote and votes.object_classifier is None
    assert parse(segment, ["--model", "m", "--object-vote"]).object_vote
    assert parse(segment, ["--model", "m", "--object-classifier", "c.pt"]).object_classifier == "c.pt"
    assert not hasattr(parse(segment, ["--model", "m"]), "track_vote")
    trainer = parse(train_segmenter, ["--root", "r", "--seg-frames", "s", "--out", "o", "--metrics", "m",
                                      "--checkpoints", "c", "--epochs", 1, "--batch-size", 1, "--lr", 0.1,
                                      "--weight-decay", 0])
    assert not {"object_vote", "track_vote", "object_classifier"} & set(vars(trainer))


def test_object_classifier_section_matches_its_trainer_and_config():
    # every key of segmenter.object_classifier is a flag of train-object-classifier, in the
    # schema, and the model's keys are ObjectClassifierConfig's fields (their one default)
    from futureseg.models.object_classifier import ObjectClassifierConfig
    from futureseg.segment import train_object_classifier

    section = CONFIG["segmenter"]["object_classifier"]
    schema = schema_section("segmenter")["properties"]["object_classifier"]
    assert set(schema["properties"]) == set(schema["required"]) == set(section)
    args = parse(train_object_classifier, ["--root", "r", "--seg-frames", "s", "--out", "o", "--metrics", "m",
                                           "--checkpoints", "c", *_flags(section)])
    for key, value in section.items():
        assert getattr(args, key) == value, key
    model_keys = {"crop_size", "width"}
    assert model_keys <= fields(ObjectClassifierConfig) and model_keys <= set(section)


def test_recurrent_section_matches_its_trainer_config_and_schema():
    # segmenter.temporal's values are the registry's; every key of segmenter.recurrent is a flag
    # of train-segmenter, in the schema, and its model keys are TemporalSegmenterConfig's fields
    from futureseg.models.segmenters import TEMPORAL
    from futureseg.models.temporal_segmenter import TemporalSegmenterConfig

    section = CONFIG["segmenter"]["recurrent"]
    schema = schema_section("segmenter")["properties"]
    assert schema["temporal"]["enum"] == list(TEMPORAL) and CONFIG["segmenter"]["temporal"] == "none"
    assert set(schema["recurrent"]["properties"]) == set(schema["recurrent"]["required"]) == set(section)
    assert set(section) == set(train_segmenter.RECURRENT_TRAINING) | set(train_segmenter.RECURRENT_MODEL)
    assert set(train_segmenter.RECURRENT_MODEL) <= fields(TemporalSegmenterConfig)
    args = parse(train_segmenter, ["--root", "r", "--out", "o", "--metrics", "m", "--checkpoints", "c", "--epochs", 1,
                                   "--batch-size", 1, "--lr", 0.1, "--weight-decay", 0, "--model", "unet",
                                   "--temporal", "convgru", *_flags(section)])
    for key, value in section.items():
        assert getattr(args, key) == value, key
    assert parse(pseudo_label, ["--model", "m", "--cache", "c", "--out", "o", "--frames", 11,
                                "--temporal", "convlstm"]).temporal == "convlstm"


def _flags(section: dict) -> list[str]:
    """What the rules pass (workflow/rules/common.smk: flags)."""
    argv = []
    for key, value in section.items():
        argv += [f"--{key.lower().replace('_', '-')}", ",".join(map(str, value)) if isinstance(value, list) else value]
    return argv


@pytest.mark.parametrize("model", ["unet", "enet", "maskrcnn"])
def test_the_segmenter_verb_takes_every_key_of_its_section(model):
    section = CONFIG["segmenter"][model]
    args = parse(train_segmenter, ["--root", "r", "--seg-frames", "s", "--out", "o", "--metrics", "m",
                                   "--checkpoints", "c", "--model", model, *_flags(section)])
    for key, value in section.items():
        assert getattr(args, key) == value, key


def test_the_predictor_verb_builds_the_configured_model():
    for name in predictors.names():
        args = parse(train_predictor, ["--cache", "c", "--val-cache", "v", "--mean-std", "m", "--out", "o",
                                       "--metrics", "x", "--checkpoints", "k", "--model", name,
                                       "--model-config", json.dumps(CONFIG["predictor"][name]),
                                       "--epochs", 1, "--batch-size", 1, "--lr", 0.1, "--weight-decay", 0])
        model = train_predictor.build_model(name, (11, 3, 32, 48), args.model_config)
        built = predictors.model_config(model)
        assert {k: built[k] for k in CONFIG["predictor"][name]} == CONFIG["predictor"][name], name


@pytest.mark.parametrize("verb, required", [
    (train_predictor, ["--cache", "c", "--val-cache", "v", "--mean-std", "m", "--out", "o", "--metrics", "x",
                       "--checkpoints", "k", "--model", "simvp"]),
    (train_segmenter, ["--root", "r", "--seg-frames", "s", "--out", "o", "--metrics", "m", "--checkpoints", "c"]),
    (train_forecaster, ["--root", "r", "--val-pseudo", "v", "--out", "o", "--metrics", "m", "--checkpoints", "c",
                        "--model", "simvp", "--prior", "motion"]),
    (train_direct, ["--root", "r", "--cache", "c", "--val-cache", "v", "--out", "o", "--metrics", "m",
                    "--checkpoints", "k"]),
])
def test_weight_shaping_settings_have_no_verb_defaults(verb, required, capsys):
    # a verb run by hand without them is refused, rather than train with values of its own
    with pytest.raises(SystemExit):
        parse(verb, required)
    assert "the following arguments are required: --epochs, --batch-size, --lr, --weight-decay" in capsys.readouterr().err


def test_dynamics_section_schema_and_model_config_agree():
    from futureseg.models.dynamics import INTERACTIONS, DynamicsConfig

    section = CONFIG["dynamics"]
    schema = SCHEMA["dynamics"]
    assert set(schema["properties"]) == set(schema["required"]) == set(section)
    model_keys = fields(DynamicsConfig) - {"size"}
    assert model_keys <= set(section)  # every model setting is the config's to choose
    assert schema["properties"]["interaction"]["enum"] == list(INTERACTIONS)
    DynamicsConfig(size=(16, 24), **{k: section[k] for k in model_keys})


def test_real_data_config_validates_and_plans_a_run(tmp_path):
    """real-data.yaml over config.yaml, as the README runs it, with a cluster's file of its own
    (partitions, account) after them: the schema accepts it and a dry run through the SLURM
    profile plans route dynamics with real-data.yaml's settings, every job with its runtime,
    memory and partition."""
    import subprocess
    import sys

    from futureseg.data.synth import generate_dataset
    from pipeline_helpers import planned_resources

    generate_dataset(tmp_path / "ds", {"train": 1, "val": 1, "unlabeled": 1, "hidden": 1}, 32, 48, seed=0)
    real = yaml.safe_load((REPO / "real-data.yaml").read_text())
    cluster = tmp_path / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "ds")}, "resources": {
        "slurm": {"partition": "cpu", "gpu_partition": "gpu", "account": "my_project"}}}))
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--profile",
         str(REPO / "slurm"), "--configfile", str(REPO / "config.yaml"), str(REPO / "real-data.yaml"), str(cluster),
         "--dry-run", "--printshellcmds"],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shell = result.stdout
    assert "futureseg train-dynamics" in shell and "futureseg dynamics --model" in shell
    assert f"--interaction {real['dynamics']['interaction']}" in shell and f"--layers {real['dynamics']['layers']}" in shell
    jobs = planned_resources(shell)
    assert {rule for rule, _ in jobs} >= {"check_data", "segment_references", "pseudo_label", "tracks", "train_dynamics",
                                          "dynamics", "score", "submission"}, jobs
    for rule, resources in jobs:
        assert int(resources["runtime"]) > 0 and int(resources["mem_mb"]) > 0, (rule, resources)
        assert resources["slurm_partition"] == ("gpu" if int(resources["gpu"]) else "cpu"), (rule, resources)
        assert resources["slurm_account"] == "my_project", (rule, resources)
    for route in {"frames", "masks", "direct"} - set(real["routes"]):
        assert {"frames": "train-predictor", "masks": "train-forecaster", "direct": "train-direct"}[route] not in shell


# Every config file the repository ships, stacked over config.yaml as its header runs it.
SHIPPED_STACKS = [
    ("real-data.yaml",),
    ("workflow/benchmarks/quality.yaml",),
    ("workflow/benchmarks/scale.yaml",),
    ("workflow/benchmarks/scale.yaml", "workflow/benchmarks/scale-small.yaml"),
    ("real-data.yaml", "workflow/benchmarks/gpu-check.yaml"),
    ("real-data.yaml", "workflow/benchmarks/gpu-check.yaml", "workflow/benchmarks/gpu-check-maskrcnn.yaml"),
    ("real-data.yaml", "workflow/benchmarks/gpu-check.yaml", "workflow/benchmarks/gpu-check-temporal.yaml"),
] + [(str(path.relative_to(REPO)),) for path in sorted((REPO / "workflow/ablations").glob("*.yaml"))]


@pytest.mark.parametrize("stack", SHIPPED_STACKS, ids=lambda stack: "+".join(Path(p).stem for p in stack))
def test_every_shipped_config_stack_passes_the_schema(stack):
    from snakemake.utils import validate

    from pipeline_helpers import merged

    config = CONFIG
    for path in stack:
        config = merged(config, yaml.safe_load((REPO / path).read_text()))
    validate(config, str(REPO / "workflow/schemas/config.schema.yaml"))


def test_every_shipped_config_file_is_in_a_checked_stack():
    shipped = {str(p.relative_to(REPO)) for folder in ("workflow/benchmarks", "workflow/ablations")
               for p in (REPO / folder).glob("*.yaml")}
    assert shipped <= {path for stack in SHIPPED_STACKS for path in stack}


def test_the_gpu_check_runs_every_route_at_the_real_size_for_a_few_hundred_steps():
    """The README's GPU check: real-data.yaml's models, every route, 160×240, short training."""
    from pipeline_helpers import merged

    config = CONFIG
    for path in SHIPPED_STACKS[4]:
        config = merged(config, yaml.safe_load((REPO / path).read_text()))
    routes = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["$defs"]["route"]["enum"]
    assert set(config["routes"]) == set(routes)
    assert (config["data"]["synthetic"]["height"], config["data"]["synthetic"]["width"]) == (160, 240)
    assert 100 <= config["max_train_steps"] <= 500
    assert config["predictor"]["simvp"] == yaml.safe_load((REPO / "real-data.yaml").read_text())["predictor"]["simvp"]
