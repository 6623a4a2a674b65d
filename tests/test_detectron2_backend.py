"""The detectron2 backend of the segmenter (futureseg.models.maskrcnn_detectron2).

Tests that need detectron2 skip when it is not installed (it builds from source: see
envs/detectron2.yaml). The config tests and the missing-detectron2 error run without
it, so the file is not skipped as a whole.
"""

import dataclasses
import importlib
import importlib.util
import sys

import numpy as np
import pytest
import torch

import futureseg.models
from futureseg.core.errors import ConfigError
from futureseg.core.instances import mask_to_instances
from futureseg.models import maskrcnn_detectron2 as d2
from futureseg.models.maskrcnn_detectron2 import Detectron2MaskRCNN, Detectron2MaskRCNNConfig
from futureseg.models.maskrcnn_torchvision import MaskRCNNConfig
from futureseg.core.classes import class_name

needs_detectron2 = pytest.mark.skipif(
    importlib.util.find_spec("detectron2") is None, reason="detectron2 is not installed (see envs/detectron2.yaml)"
)

H, W = 64, 96
# A small model so that a few training steps stay fast on 2 CPU cores; the R50-FPN
# default is checked on its config alone.
SMALL = dict(
    depth=18,
    fpn_channels=64,
    box_head_dim=128,
    mask_head_channels=64,
    rpn_pre_nms_top_n_train=300,
    rpn_post_nms_top_n_train=100,
    rpn_pre_nms_top_n_test=300,
    rpn_post_nms_top_n_test=100,
    box_batch_size_per_image=64,
    anchor_sizes=(8, 16, 32, 64, 128),
)


@pytest.fixture(autouse=True)
def one_thread():
    """The models here are tiny: one thread is as fast, and on a busy 2-core machine it
    avoids the OpenMP oversubscription that makes 2 threads many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def class_mask(seed: int, n_objects: int) -> np.ndarray:
    """A (H, W) class-id mask with `n_objects` rectangles of distinct classes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((H, W), dtype=np.uint8)
    for label in rng.choice(np.arange(1, 49), n_objects, replace=False):
        y, x = rng.integers(0, H - 20), rng.integers(0, W - 24)
        mask[y : y + rng.integers(10, 20), x : x + rng.integers(12, 24)] = label
    return mask


def frame_of(mask: np.ndarray, seed: int) -> np.ndarray:
    """A uint8 RGB frame: grey floor, each class its own colour."""
    rng = np.random.default_rng(seed)
    palette = np.random.default_rng(0).integers(0, 256, (49, 3))
    image = np.where(mask[..., None] > 0, palette[mask], 110).astype(np.float32)
    return np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)


def to_inputs(frame: np.ndarray, mask: np.ndarray):
    """(image, target) in the backend convention: RGB float 0…1 and mask_to_instances' targets."""
    image = torch.from_numpy(frame).permute(2, 0, 1).float() / 255
    return image, {k: torch.from_numpy(v) for k, v in mask_to_instances(mask, min_pixels=4).items()}


def fixed_batch():
    masks = [class_mask(1, 3), class_mask(2, 2)]
    images, targets = zip(*(to_inputs(frame_of(m, i), m) for i, m in enumerate(masks)))
    return list(images), list(targets)


# ---------------------------------------------------------------- without detectron2


def test_missing_detectron2_raises_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "detectron2", None)  # makes `import detectron2` fail
    # Importing the module needs no detectron2 ...
    monkeypatch.delitem(sys.modules, "futureseg.models.maskrcnn_detectron2", raising=False)
    monkeypatch.setattr(futureseg.models, "maskrcnn_detectron2", d2)  # restored after the re-import
    module = importlib.import_module("futureseg.models.maskrcnn_detectron2")
    # ... building the backend names the config key and where the install is described.
    with pytest.raises(ConfigError, match=r"segmenter\.backend: detectron2 is not installed.*envs/detectron2\.yaml"):
        module.Detectron2MaskRCNN(module.Detectron2MaskRCNNConfig(height=H, width=W))


def test_defaults_build_the_same_model_as_the_torchvision_backend():
    ours, theirs = Detectron2MaskRCNNConfig(height=H, width=W), MaskRCNNConfig()
    shared = {f.name for f in dataclasses.fields(ours)} & {f.name for f in dataclasses.fields(theirs)}
    assert {"anchor_sizes", "rpn_post_nms_top_n_train", "box_batch_size_per_image", "box_head_dim"} <= shared
    for name in sorted(shared - {"norm"}):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ours.norm == theirs.norm.upper()
    assert ours.detections_per_img == theirs.box_detections_per_img
    assert ours.depth == int(theirs.backbone.removeprefix("resnet"))
    # no mean/std given: ImageNet's, as the torchvision backend's default (0…1 scale there)
    np.testing.assert_allclose(np.array(d2.IMAGENET_MEAN) / 255, theirs.image_mean, atol=1e-6)
    np.testing.assert_allclose(np.array(d2.IMAGENET_STD) / 255, theirs.image_std, atol=1e-6)


def test_config_round_trips_through_a_checkpoint_dict():
    config = Detectron2MaskRCNNConfig(height=H, width=W, norm="gn", pixel_mean=[1, 2, 3], anchor_sizes=[8, 16, 32, 64, 128])
    assert (config.norm, config.pixel_mean, config.anchor_sizes) == ("GN", (1.0, 2.0, 3.0), (8, 16, 32, 64, 128))
    assert Detectron2MaskRCNNConfig(**dataclasses.asdict(config)) == config
    assert Detectron2MaskRCNNConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match="unknown keys"):
        Detectron2MaskRCNNConfig.from_dict({**config.to_dict(), "backbone": "resnet50"})


def test_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match=r"segmenter\.depth"):
        Detectron2MaskRCNNConfig(height=H, width=W, depth=152)
    with pytest.raises(ConfigError, match=r"segmenter\.norm"):
        Detectron2MaskRCNNConfig(height=H, width=W, norm="FrozenBN")
    with pytest.raises(ConfigError, match=r"segmenter\.pixel_std"):
        Detectron2MaskRCNNConfig(height=H, width=W, pixel_std=(1.0, 0.0, 1.0))


# ---------------------------------------------------------------- with detectron2


@needs_detectron2
def test_cfg_trains_from_scratch_on_unresized_frames():
    config = Detectron2MaskRCNNConfig(height=H, width=W, pixel_mean=(10.0, 20.0, 30.0), pixel_std=(1.0, 2.0, 3.0))
    cfg = d2.build_cfg(config)
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.RESNETS.NORM == "BN" and cfg.MODEL.FPN.NORM == "BN"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 48
    assert cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 1000
    assert tuple(cfg.INPUT.MIN_SIZE_TRAIN) == (H,) and cfg.INPUT.MAX_SIZE_TRAIN == W
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (H, W)
    # our RGB statistics, in the channel order of the model's input format
    order = slice(None, None, -1) if cfg.INPUT.FORMAT == "BGR" else slice(None)
    assert list(cfg.MODEL.PIXEL_MEAN) == [10.0, 20.0, 30.0][order]
    assert list(cfg.MODEL.PIXEL_STD) == [1.0, 2.0, 3.0][order]
    assert d2.build_cfg(Detectron2MaskRCNNConfig(height=H, width=W, norm="gn")).MODEL.RESNETS.NORM == "GN"
    # trainable_layers counts stages from the top, FREEZE_AT from the stem
    assert d2.build_cfg(Detectron2MaskRCNNConfig(height=H, width=W, trainable_layers=3)).MODEL.BACKBONE.FREEZE_AT == 2


@needs_detectron2
def test_model_has_trainable_norms():
    from detectron2.layers import FrozenBatchNorm2d

    backend = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, depth=18))
    modules = list(backend.model.modules())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in modules)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in modules)
    assert all(p.requires_grad for p in backend.model.parameters())
    assert backend.name == "detectron2" and backend.config.depth == 18
    assert backend.cfg.MODEL.RESNETS.DEPTH == 18
    assert backend.cfg.MODEL.ANCHOR_GENERATOR.SIZES == [[16], [32], [64], [128], [256]]
    # every residual branch starts at zero
    from detectron2.modeling.backbone.resnet import BasicBlock

    blocks = [m for m in modules if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(torch.all(b.conv2.norm.weight == 0) for b in blocks)


@needs_detectron2
def test_training_steps_lower_the_loss_and_predict_works():
    torch.manual_seed(0)
    # score threshold 0: an untrained model's detections all score low
    backend = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, box_score_thresh=0.0, **SMALL))
    images, targets = fixed_batch()
    optimizer = torch.optim.SGD(backend.model.parameters(), lr=5e-3, momentum=0.9)
    totals = []
    for _ in range(6):
        losses = backend.losses(images, targets)
        assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
        total = sum(losses.values())
        assert torch.isfinite(total)
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[-1] < 0.8 * totals[0], totals

    outputs = backend.predict(images)
    assert backend.model.training  # left in the mode it was in
    assert len(outputs) == 2
    for out in outputs:
        n = len(out["labels"])
        assert n > 0
        assert out["labels"].dtype == torch.int64 and out["labels"].min() >= 1 and out["labels"].max() <= 48
        assert out["masks"].shape == (n, H, W) and out["masks"].dtype == torch.float32
        assert 0.0 <= out["masks"].min() and out["masks"].max() <= 1.0
        assert ((out["masks"] > 0.05) & (out["masks"] < 0.95)).any()  # soft masks, not binarised
        assert out["scores"].shape == (n,) and torch.all(out["scores"][:-1] >= out["scores"][1:])

    # thresholded at 0.5, the soft masks are detectron2's own binary masks
    backend.model.eval()
    with torch.no_grad():
        native = backend.model(backend.detectron2_inputs(images))
    backend.model.train()
    for out, own in zip(outputs, native):
        assert torch.equal(out["masks"] >= 0.5, own["instances"].pred_masks)
        torch.testing.assert_close(out["scores"], own["instances"].scores)

    # the weights (BatchNorm statistics included) carry the predictions to a fresh model
    restored = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, box_score_thresh=0.0, **SMALL))
    restored.load_state_dict(backend.state_dict())
    again = restored.predict(images)
    torch.testing.assert_close(again[0]["scores"], outputs[0]["scores"])
    torch.testing.assert_close(again[0]["masks"], outputs[0]["masks"])


@needs_detectron2
def test_frames_without_objects_train():
    torch.manual_seed(0)
    backend = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, **SMALL))
    images, targets = fixed_batch()
    empty = to_inputs(frame_of(np.zeros((H, W), np.uint8), 5), np.zeros((H, W), np.uint8))
    assert len(empty[1]["labels"]) == 0
    for batch_images, batch_targets in ([images[0], empty[0]], [targets[0], empty[1]]), ([empty[0]] * 2, [empty[1]] * 2):
        losses = backend.losses(batch_images, batch_targets)
        total = sum(losses.values())
        assert torch.isfinite(total)
        total.backward()


@needs_detectron2
def test_converts_inputs_to_detectron2_convention():
    from detectron2.structures import BitMasks

    backend = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, **SMALL))
    images, targets = fixed_batch()
    inputs = backend.detectron2_inputs(images, targets)
    for item, image, target in zip(inputs, images, targets):
        rgb = item["image"].flip(0) if backend.cfg.INPUT.FORMAT == "BGR" else item["image"]
        torch.testing.assert_close(rgb, image * 255)
        instances = item["instances"]
        assert instances.image_size == (H, W)
        assert instances.gt_classes.tolist() == (target["labels"] - 1).tolist()  # no background class
        torch.testing.assert_close(instances.gt_boxes.tensor, target["boxes"])
        assert isinstance(instances.gt_masks, BitMasks)
        assert torch.equal(instances.gt_masks.tensor, target["masks"].bool())


@needs_detectron2
def test_labels_outside_the_classes_are_rejected():
    from futureseg.core.errors import FuturesegError

    backend = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, **SMALL))
    images, targets = fixed_batch()
    targets[0] = {**targets[0], "labels": torch.zeros_like(targets[0]["labels"])}
    with pytest.raises(FuturesegError, match=r"labels must lie in 1\.\.48"):
        backend.losses(images, targets)


@pytest.fixture
def seg_frames(tmp_path):
    """A tiny segmentation training set folder: 3 samples, the last one without objects."""
    masks = np.stack([class_mask(10, 3), class_mask(11, 2), np.zeros((H, W), np.uint8)])
    masks[0, 0:3, 0:1] = 7  # a 3-pixel sliver, below min_pixels=4
    images = np.stack([frame_of(m, i) for i, m in enumerate(masks)])
    folder = tmp_path / "segframes"
    folder.mkdir()
    np.save(folder / "images.npy", images)
    np.save(folder / "masks.npy", masks)
    return folder, images, masks


@needs_detectron2
def test_registered_training_set_maps_to_model_inputs(seg_frames):
    import pycocotools.mask as mask_util
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.structures import BitMasks, BoxMode
    from detectron2.utils.events import EventStorage

    folder, images, masks = seg_frames
    name = "futureseg_test_segframes"
    d2.register_training_set(name, folder, min_pixels=4)
    d2.register_training_set(name, folder, min_pixels=4)  # registering again replaces it
    assert MetadataCatalog.get(name).thing_classes == [class_name(c) for c in range(1, 49)]
    records = DatasetCatalog.get(name)
    assert [r["row"] for r in records] == [0, 1, 2]
    assert all((r["height"], r["width"]) == (H, W) for r in records)
    for record, mask in zip(records, masks):
        expected = mask_to_instances(mask, min_pixels=4)
        annotations = record["annotations"]
        assert [a["category_id"] + 1 for a in annotations] == expected["labels"].tolist()
        for annotation, box, object_mask in zip(annotations, expected["boxes"], expected["masks"]):
            assert annotation["bbox_mode"] == BoxMode.XYXY_ABS and annotation["bbox"] == box.tolist()
            np.testing.assert_array_equal(mask_util.decode(annotation["segmentation"]), object_mask)
    assert 7 not in [a["category_id"] + 1 for a in records[0]["annotations"]]  # the sliver is dropped
    assert records[2]["annotations"] == []

    torch.manual_seed(0)
    backend = Detectron2MaskRCNN(Detectron2MaskRCNNConfig(height=H, width=W, **SMALL))
    cfg = backend.cfg.clone()
    cfg.defrost()
    cfg.INPUT.RANDOM_FLIP = "none"  # so the pixels can be compared with the arrays
    mapper = d2.ArrayDatasetMapper(cfg, is_train=True)
    mapped = [mapper(r) for r in records]
    for item, record, image in zip(mapped, records, images):
        assert item["image"].shape == (3, H, W) and item["image"].dtype == torch.uint8  # not resized
        channels = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        np.testing.assert_array_equal(item["image"].permute(1, 2, 0).numpy(), channels)
        instances = item["instances"]
        assert isinstance(instances.gt_masks, BitMasks)
        assert instances.gt_classes.tolist() == [a["category_id"] for a in record["annotations"]]
        torch.testing.assert_close(
            instances.gt_boxes.tensor, torch.tensor([a["bbox"] for a in record["annotations"]]).reshape(-1, 4)
        )
    # detectron2's own input format trains the model ...
    backend.model.train()
    with EventStorage():
        native = backend.model(mapped)
    assert all(torch.isfinite(v) for v in native.values())
    # ... and so does the backend interface, fed from the same records
    batch_images = [item["image"].float() / 255 for item in mapped]
    if cfg.INPUT.FORMAT == "BGR":
        batch_images = [image.flip(0) for image in batch_images]
    batch_targets = [
        {
            "boxes": item["instances"].gt_boxes.tensor,
            "labels": item["instances"].gt_classes + 1,
            "masks": item["instances"].gt_masks.tensor.to(torch.uint8),
        }
        for item in mapped
    ]
    losses = backend.losses(batch_images, batch_targets)
    assert all(torch.isfinite(v) for v in losses.values())
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@needs_detectron2
def test_registering_a_broken_folder_names_the_file(tmp_path):
    from futureseg.core.errors import DataError

    np.save(tmp_path / "images.npy", np.zeros((2, H, W, 3), np.uint8))
    np.save(tmp_path / "masks.npy", np.zeros((2, H, W + 1), np.uint8))
    with pytest.raises(DataError, match=r"masks\.npy: expected"):
        d2.register_training_set("futureseg_test_broken", tmp_path)
    (tmp_path / "images.npy").unlink()
    with pytest.raises(DataError, match=r"images\.npy: cannot read"):
        d2.register_training_set("futureseg_test_broken", tmp_path)
