import typing
from dataclasses import fields

import pytest

from stargan_ray.config import (BOUNDS, SECTIONS, ConfigError, from_dict, load_experiment, to_toml,
                                with_overrides)


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


# ---------------------------------------------------------------- numeric ranges (BOUNDS)


def _refused(override: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_experiment("toy", [override])
    assert "\n" not in str(err.value)
    return str(err.value)


def test_every_numeric_key_has_a_range():
    numeric = {f"{section}.{f.name}" for section, cls in SECTIONS.items()
               for f in fields(cls) if {int, float} & _base_types(cls, f.name)}
    assert numeric - set(BOUNDS) == set(), "numeric keys without a range in config_bounds.BOUNDS"
    assert set(BOUNDS) <= numeric  # no rule for a key that is gone
    # ints have an upper bound too: a TOML integer is 64 bits, torch and numpy overflow sooner
    unbounded_ints = [key for key, bound in BOUNDS.items() if bound.high is None
                      and int in _base_types(SECTIONS[key.split(".")[0]], key.split(".")[1])]
    assert unbounded_ints == []


def _base_types(cls: type, name: str) -> set[type]:
    hint = typing.get_type_hints(cls)[name]
    return {t for t in (typing.get_args(hint) or (hint,)) if t is not type(None)}


@pytest.mark.parametrize("override, message", [
    # below the lower bound
    ("train.seed=-1", "train.seed: must be >= 0 and <= 4294967295 (numpy's seed range), got -1"),
    ("data.batch_size=0", "data.batch_size: must be >= 1 and <= 65536, got 0"),
    ("loss.lambda_ds=-0.5", "loss.lambda_ds: must be >= 0 and finite, got -0.5"),
    ("eval.kid_subset_size=1", "eval.kid_subset_size: must be >= 2 and <= 1000000000"),
    # above the upper bound
    ("train.seed=4294967296", "train.seed: must be >= 0 and <= 4294967295"),
    ("model.num_domains=100000", "model.num_domains: must be >= 2 and <= 256"),
    ("train.total_iters=99999999999999", "train.total_iters: must be >= 1 and <= 1000000000"),
    ("model.style_dim=100000", "model.style_dim: must be >= 1 and <= 8192, got 100000"),
    # a half-open interval: the upper end itself is refused
    ("optim.beta2=1.0", "optim.beta2: must be >= 0 and < 1 and finite, got 1.0"),
    ("optim.ema_beta=-0.1", "optim.ema_beta: must be >= 0 and < 1"),
    ("data.randcrop_prob=1.5", "data.randcrop_prob: must be >= 0 and <= 1 and finite, got 1.5"),
    # not finite
    ("optim.lr=inf", "optim.lr: must be >= 0 and finite, got inf"),
    ("loss.lambda_cyc=nan", "loss.lambda_cyc: must be >= 0 and finite, got nan"),
    # a power of two within bounds
    ("model.img_size=96", "model.img_size: must be a power of two >= 32 and <= 1024"),
    ("model.img_size=2048", "model.img_size: must be a power of two >= 32 and <= 1024"),
])
def test_each_kind_of_range_names_the_key_the_value_and_the_rule(override, message):
    assert message in _refused(override)


@pytest.mark.parametrize("override", ["train.seed=0", "train.seed=4294967295", "optim.beta1=0",
                                      "optim.beta2=0.999999", "data.randcrop_prob=1",
                                      "model.img_size=32", "data.batch_per_worker=0"])
def test_the_ends_of_each_range_are_accepted(override):
    load_experiment("toy", [override])


def test_a_tune_trial_config_is_checked_the_same_way():
    with pytest.raises(ConfigError, match="train.seed: must be >= 0"):
        with_overrides(load_experiment("toy"), [("train.seed", -3)])
