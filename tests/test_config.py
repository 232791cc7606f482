import pytest

from stargan_ray.config import (ConfigError, from_dict, load_experiment, to_toml, with_overrides)


def test_paper_experiments_hold_the_paper_values():
    celeba, afhq = load_experiment("celeba_hq"), load_experiment("afhq")
    assert (celeba.model.num_domains, celeba.model.w_hpf, celeba.loss.lambda_ds) == (2, 1.0, 1.0)
    assert (afhq.model.num_domains, afhq.model.w_hpf, afhq.loss.lambda_ds) == (3, 0.0, 2.0)
    for cfg in (celeba, afhq):
        assert (cfg.model.img_size, cfg.model.latent_dim, cfg.model.style_dim) == (256, 16, 64)
        assert cfg.model.dim_in == 2**14 // 256
        assert (cfg.optim.lr, cfg.optim.f_lr, cfg.optim.beta1, cfg.optim.beta2) == (1e-4, 1e-6, 0.0, 0.99)
        assert (cfg.optim.weight_decay, cfg.optim.ema_beta) == (1e-4, 0.999)
        assert (cfg.data.batch_size, cfg.train.total_iters, cfg.loss.ds_iter) == (8, 100000, 100000)
        assert (cfg.loss.lambda_sty, cfg.loss.lambda_cyc, cfg.loss.lambda_reg) == (1.0, 1.0, 1.0)


def test_overrides_are_parsed_and_typed():
    cfg = load_experiment("afhq", ["loss.lambda_ds=2.5", "train.total_iters=7", "data.train_dir=x/y"])
    assert cfg.loss.lambda_ds == 2.5 and cfg.train.total_iters == 7 and cfg.data.train_dir == "x/y"
    # ints are accepted where floats are expected, and become floats
    assert isinstance(load_experiment("afhq", ["loss.lambda_cyc=3"]).loss.lambda_cyc, float)


@pytest.mark.parametrize("override, key", [
    ("loss.lambda_dss=1", "loss.lambda_dss: unknown key"),
    ("lossy.lambda_ds=1", "lossy.lambda_ds"),
    ("model.img_size=100", "model.img_size: must be a power of two >= 32"),
    ("model.img_size=16", "model.img_size"),
    ("model.num_domains=1", "model.num_domains: must be >= 2"),
    ("loss.lambda_sty=-1", "loss.lambda_sty: must be >= 0"),
    ("train.total_iters=1.5", "train.total_iters: expected int"),
    ('model.img_size="big"', "model.img_size: expected int"),
    ("train.precision=fp8", "train.precision: must be one of fp32, tf32, bf16"),
    ("eval.frechet_method=svd", "eval.frechet_method: must be one of auto, eigh, sqrtm"),
    ('model.wing_path=""', "model.wing_path: must name the FAN checkpoint"),
])
def test_bad_values_name_the_key_and_what_is_allowed(override, key):
    with pytest.raises(ConfigError) as err:
        load_experiment("celeba_hq", [override])
    assert key in str(err.value)
    assert "\n" not in str(err.value)


def test_unknown_section_in_a_file_is_an_error():
    with pytest.raises(ConfigError, match="optimizer: unknown section"):
        from_dict({"optimizer": {"lr": 1}})


def test_default_dim_in_follows_the_official_formula_and_can_be_set():
    assert load_experiment("celeba_hq", ["model.img_size=64", "model.w_hpf=0"]).model.dim_in == 256
    assert load_experiment("toy").model.dim_in == 16


def test_toml_round_trip(tmp_path):
    cfg = with_overrides(load_experiment("toy"), ["loss.lambda_sty=0.25", "name=best"])
    path = tmp_path / "best.toml"
    path.write_text(to_toml(cfg))
    assert load_experiment(path) == cfg
