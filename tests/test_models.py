import pytest
import torch

from stargan_ray.config import load_experiment
from stargan_ray.models import build_networks, count_parameters

OFFICIAL_COUNTS = {
    "celeba_hq": {"generator": 43_467_395, "mapping_network": 2_438_272,
                  "style_encoder": 20_916_928, "discriminator": 20_852_290},
    "afhq": {"generator": 33_892_995, "mapping_network": 3_259_072,
             "style_encoder": 20_949_760, "discriminator": 20_852_803},
}


@pytest.mark.parametrize("name", sorted(OFFICIAL_COUNTS))
def test_parameter_counts_equal_the_official_ones(name):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        nets = build_networks(load_experiment(name).model)
    assert {k: count_parameters(m) for k, m in nets.items()} == OFFICIAL_COUNTS[name]


def test_official_key_names():
    with torch.device("meta"):
        nets = build_networks(load_experiment("celeba_hq").model)
    g_keys = set(nets.generator.state_dict())
    # a sample of the official names, including the high-pass filter buffer
    for key in ["from_rgb.weight", "encode.0.conv1x1.weight", "encode.0.norm1.weight",
                "decode.0.norm1.fc.weight", "decode.6.conv2.bias", "to_rgb.0.weight",
                "to_rgb.2.weight", "hpf.filter"]:
        assert key in g_keys
    assert "shared.0.weight" in nets.mapping_network.state_dict()
    assert "unshared.1.6.bias" in nets.mapping_network.state_dict()
    assert "shared.8.weight" in nets.style_encoder.state_dict()  # the 4x4 conv after 6 ResBlks
    assert "main.10.weight" in nets.discriminator.state_dict()  # the final 1x1 conv
    assert len(nets.generator.encode) == 7 and len(nets.generator.decode) == 7  # w_hpf adds one


def test_shapes_and_domain_selection(tiny_cfg):
    nets = build_networks(tiny_cfg.model)
    m = tiny_cfg.model
    x = torch.randn(3, 3, m.img_size, m.img_size)
    y = torch.tensor([0, 1, 1])
    z = torch.randn(3, m.latent_dim)
    s = nets.mapping_network(z, y)
    assert s.shape == (3, m.style_dim)
    assert nets.generator(x, s).shape == x.shape
    assert nets.style_encoder(x, y).shape == (3, m.style_dim)
    logits = nets.discriminator(x, y)
    assert logits.shape == (3,)
    # each sample reads the head of its own domain
    all_heads = nets.discriminator.main(x).flatten(1)
    assert torch.equal(logits, all_heads[torch.arange(3), y])
    other = nets.mapping_network(z, 1 - y)
    assert not torch.allclose(s, other)


def test_high_pass_path_uses_masks():
    cfg = load_experiment("celeba_hq", ["model.img_size=128", "model.dim_in=4",
                                        "model.max_conv_dim=8", "model.style_dim=8"])
    torch.manual_seed(0)
    g = build_networks(cfg.model).generator
    x, s = torch.randn(1, 3, 128, 128), torch.randn(1, 8)
    ones = (torch.ones(1, 1, 128, 128), torch.ones(1, 1, 128, 128))
    zeros = (torch.zeros(1, 1, 128, 128), torch.zeros(1, 1, 128, 128))
    out_zero, out_one = g(x, s, masks=zeros), g(x, s, masks=ones)
    assert torch.allclose(out_zero, g(x, s, masks=None))  # zero masks add nothing
    assert not torch.allclose(out_zero, out_one)
