import pytest
import torch

from futureseg.core.errors import ConfigError
from futureseg.models import predictors
from futureseg.models.predictors import count_parameters, scheduled_sampling_ratio
from futureseg.models.predictors.convlstm import ConvLSTMConfig
from futureseg.models.predictors.simvp import SimVPConfig


def build_predictor(name, in_shape, **settings):
    return predictors.build(name, in_shape, settings)

TINY = (11, 3, 32, 48)
SMALL_SIMVP = dict(hid_S=8, hid_T=32, N_S=2, N_T=2, mlp_ratio=4.0)

# OpenSTL SimVP_Model((11, 3, 160, 240), hid_S=64, hid_T=256, N_S=4, N_T=8)
PARITY = dict(hid_S=64, hid_T=256, N_S=4, N_T=8)
OPENSTL_PARAMS = {"gsta": 20_368_643, "incepu": 16_182_275}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def clip(batch=2, shape=TINY, seed=0):
    """A smooth moving pattern, so there is something learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    T, C, H, W = shape
    t = torch.arange(2 * T).view(1, -1, 1, 1, 1)
    yy = torch.arange(H).view(1, 1, 1, -1, 1)
    xx = torch.arange(W).view(1, 1, 1, 1, -1)
    phase = torch.rand(batch, 1, C, 1, 1, generator=g) * 6.28
    frames = torch.sin(0.3 * (xx - t) + phase) * torch.cos(0.2 * yy + phase)
    return frames[:, :T].contiguous(), frames[:, T:].contiguous()


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("simvp", dict(translator="gsta")),
        ("simvp", dict(translator="incepu")),
        ("convlstm", dict()),
        ("convgru", dict()),
    ],
)
def test_output_shape(name, kwargs):
    torch.manual_seed(0)
    model = build_predictor(name, TINY, **kwargs)
    x, y = clip()
    out = model(x)
    assert out.shape == x.shape and out.is_contiguous()
    assert model(x, target=y, sampling_ratio=0.5).shape == y.shape


@pytest.mark.parametrize("translator", ["gsta", "incepu"])
def test_parameter_count_matches_openstl(translator):
    model = build_predictor("simvp", (11, 3, 160, 240), translator=translator, **PARITY)
    count = count_parameters(model)
    assert count == OPENSTL_PARAMS[translator]
    assert abs(count - OPENSTL_PARAMS[translator]) <= 0.01 * OPENSTL_PARAMS[translator]


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("simvp", dict(translator="gsta", **SMALL_SIMVP)),
        ("simvp", dict(translator="incepu", **SMALL_SIMVP)),
        ("convlstm", dict(num_hidden=(16, 16), filter_size=3)),
        ("convgru", dict(num_hidden=(16, 16), filter_size=3)),
    ],
)
def test_training_lowers_loss(name, kwargs):
    torch.manual_seed(0)
    model = build_predictor(name, TINY, **kwargs)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x, y = clip()
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x, target=y, sampling_ratio=0.5), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_simvp_ignores_target_and_sampling_ratio():
    torch.manual_seed(0)
    model = build_predictor("simvp", TINY, **SMALL_SIMVP).eval()
    x, y = clip()
    with torch.no_grad():
        assert torch.equal(model(x), model(x, target=y, sampling_ratio=1.0))


@pytest.mark.parametrize("name", ["convlstm", "convgru"])
def test_recurrent_teacher_forcing_uses_targets(name):
    torch.manual_seed(0)
    model = build_predictor(name, TINY, num_hidden=(8,), filter_size=3)
    x, y = clip()
    with torch.no_grad():
        torch.manual_seed(1)
        forced = model(x, target=y, sampling_ratio=1.0)
        torch.manual_seed(1)
        free = model(x, target=y, sampling_ratio=0.0)
        inferred = model(x)
        other_targets = model(x, target=torch.zeros_like(y), sampling_ratio=1.0)
    # frame 11 depends only on the inputs; the later ones see the true frames when forced
    assert torch.equal(forced[:, 0], free[:, 0])
    assert not torch.allclose(forced[:, 1:], free[:, 1:])
    assert not torch.allclose(forced[:, 1:], other_targets[:, 1:])
    # inference is the autoregressive rollout, the same as never forcing
    assert inferred.shape == x.shape
    assert torch.equal(inferred, free)


def test_convlstm_mixed_sampling_is_per_sample_and_seeded():
    torch.manual_seed(0)
    model = build_predictor("convlstm", TINY, num_hidden=(8,), filter_size=3)
    x, y = clip(batch=8)
    with torch.no_grad():
        torch.manual_seed(3)
        a = model(x, target=y, sampling_ratio=0.5)
        torch.manual_seed(3)
        b = model(x, target=y, sampling_ratio=0.5)
        forced = model(x, target=y, sampling_ratio=1.0)
        free = model(x, target=y, sampling_ratio=0.0)
    assert torch.equal(a, b)
    assert not torch.allclose(a, forced) and not torch.allclose(a, free)


def test_convgru_is_the_lighter_cell_and_its_own_config():
    lstm = build_predictor("convlstm", TINY, num_hidden=(16, 16), filter_size=3)
    gru = build_predictor("convgru", TINY, num_hidden=(16, 16), filter_size=3)
    # three gates to the LSTM's four: 3/4 of the recurrent convolutions' weights
    assert count_parameters(gru) < count_parameters(lstm)
    assert gru.cells[1].conv_h.weight.shape[0] == 3 * 16 and lstm.cells[1].conv_h.weight.shape[0] == 4 * 16
    with pytest.raises(ConfigError, match=r"^predictor\.convgru\.patch_size"):
        build_predictor("convgru", TINY, patch_size=5)
    with pytest.raises(ConfigError, match=r"^unknown setting predictor\.convgru\.layer_norm"):
        build_predictor("convgru", TINY, layer_norm=True)


def test_every_predictor_module_is_registered():
    assert predictors.names() == ("convgru", "convlstm", "simvp")
    for name in predictors.names():
        module = predictors.module(name)
        assert module.Config.__dataclass_fields__["in_shape"] and issubclass(module.Model, torch.nn.Module)


def test_scheduled_sampling_ratio_decays_linearly():
    assert scheduled_sampling_ratio(0, 100) == 1.0
    assert scheduled_sampling_ratio(25, 100) == pytest.approx(0.75)
    assert scheduled_sampling_ratio(100, 100) == 0.0
    assert scheduled_sampling_ratio(500, 100) == 0.0
    assert scheduled_sampling_ratio(50, 100, start=0.5, end=0.1) == pytest.approx(0.3)
    assert scheduled_sampling_ratio(10, 0) == 0.0


@pytest.mark.parametrize(
    "build, key",
    [
        (lambda: build_predictor("simvp", TINY, N_S=3), "predictor.simvp.N_S"),
        (lambda: build_predictor("simvp", TINY, N_S=0), "predictor.simvp.N_S"),
        (lambda: build_predictor("simvp", (11, 3, 30, 48), N_S=4), "predictor.simvp.N_S"),
        (lambda: build_predictor("simvp", TINY, translator="swin"), "predictor.simvp.translator"),
        (lambda: build_predictor("simvp", TINY, N_T=1), "predictor.simvp.N_T"),
        (lambda: build_predictor("simvp", TINY, hid_S=7), "predictor.simvp.hid_S"),
        (lambda: build_predictor("simvp", TINY, colour="red"), "predictor.simvp.colour"),
        (lambda: build_predictor("convlstm", TINY, patch_size=5), "predictor.convlstm.patch_size"),
        (lambda: build_predictor("convlstm", TINY, patch_size=0), "predictor.convlstm.patch_size"),
        (lambda: build_predictor("convlstm", TINY, filter_size=4), "predictor.convlstm.filter_size"),
        (lambda: build_predictor("convlstm", TINY, num_hidden=()), "predictor.convlstm.num_hidden"),
        (lambda: build_predictor("predrnn", TINY), "predictor.model"),
    ],
)
def test_bad_config_raises_config_error(build, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build()


def test_configs_accept_lists_from_yaml():
    assert SimVPConfig(in_shape=[11, 3, 32, 48]).in_shape == TINY
    assert ConvLSTMConfig(in_shape=TINY, num_hidden=[16, 8]).num_hidden == (16, 8)
    model = build_predictor("convlstm", list(TINY), num_hidden=[16, 8])
    assert model.config.num_hidden == (16, 8)
