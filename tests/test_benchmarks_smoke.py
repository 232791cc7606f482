"""The benchmark scripts run end to end on CPU at tiny sizes and report consistent figures.

No figure is asserted as fast or slow (speed goals live in benchmarks/README.md as ratios measured
in one run); what is checked is that the GPU suite, prepared for a machine with a GPU, works here.
"""

import io
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stargan_ray.checkpoint import state_dict

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

import ada_small_data  # noqa: E402
import checkpoint_upload  # noqa: E402
import common  # noqa: E402
import gpu_suite  # noqa: E402
import gpu_train  # noqa: E402
import soak  # noqa: E402
import step as steplib  # noqa: E402


# One intra-op thread (conftest.one_thread): two wait for each other on a shared 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-suite")
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), str(out), "--smoke"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout


def test_gpu_suite_smoke_measures_every_planned_case(smoke_run):
    out, stdout = smoke_run
    results = json.loads((out / "results.json").read_text())
    assert results["smoke"] is True and results["device"] == "cpu"
    assert set(results["matmul_tflops"]) == {"fp32", "tf32", "bf16"}
    assert all(v > 0 for v in results["matmul_tflops"].values())
    cases = results["cases"]
    # what benchmarks/README.md says the smoke mode leaves out: compile, the FAN (w_hpf 0)
    assert not any(c["compile"] for c in cases)
    assert "model.w_hpf=0.0" in results["plan"]["overrides"]
    train = [c for c in cases if c["kind"] == "train"]
    expected = {(exp, p, cl) for exp in common.EXPERIMENTS
                for p, cl, _ in gpu_suite.SMOKE_COMBOS}
    assert {(c["experiment"], c["precision"], c["channels_last"]) for c in train} == expected
    for c in train:
        r = c["result"]
        assert "error" not in r and "skipped" not in r, (c, r)
        assert r["step_s"] > 0
        assert r["images_per_s"] == pytest.approx(c["batch"] / r["step_s"])
        flops = results["step_flops_per_image"][c["experiment"]] * c["batch"]
        assert r["tflops"] == pytest.approx(flops / r["step_s"] / 1e12)
        assert r["percent_of_peak"] == pytest.approx(
            100 * r["tflops"] / results["matmul_tflops"][c["precision"]])
    (evaluation,) = [c for c in cases if c["kind"] == "eval"]
    assert evaluation["experiment"] == "afhq" and results["plan"]["eval_img_size"] == 64
    assert evaluation["result"]["images_per_item"] == 2 * 2  # 2 sources x 2 outputs
    assert evaluation["result"]["images_per_s"] > 0
    assert "torch" in (out / "environment.txt").read_text()
    # the table comes last: a header, then one row per case
    tail = stdout.strip().splitlines()[-(len(cases) + 1):]
    assert tail[0].split()[:3] == ["case", "ms/step", "img/s"]
    assert [row.split()[0] for row in tail[1:]] == [
        c["experiment"] if c["kind"] == "train" else "eval" for c in cases]


def test_suite_flops_match_an_independent_count_at_the_case_batch(smoke_run):
    out, _ = smoke_run
    per_image = json.loads((out / "results.json").read_text())["step_flops_per_image"]
    cfg = common.load_config("afhq", common.SMOKE_MODEL, 2)
    counted = common.step_flops(cfg, torch.device("cpu"), fake=True)
    assert counted == pytest.approx(2 * per_image["afhq"], rel=1e-9)
    # and the fake-tensor count equals a count on real tensors
    assert common.step_flops(cfg, torch.device("cpu"), fake=False) == counted


def test_step_benchmark_times_train_step_and_writes_its_figures(tmp_path):
    code = steplib.main(["--experiment", "toy", *(f"--set={o}" for o in common.SMOKE_MODEL),
                         "--batch-size", "2", "--steps", "1", "--repeats", "2", "--warmup", "1",
                         "--json", str(tmp_path / "step.json")])
    assert code == 0
    result = json.loads((tmp_path / "step.json").read_text())
    assert result["batch_size"] == 2 and result["img_size"] == 32
    assert len(result["repeats_s"]) == 2 and result["step_s"] > 0 and result["cpu_s"] > 0
    assert result["images_per_s"] == pytest.approx(2 / result["step_s"])


def test_ada_benchmark_reports_p_and_the_same_fid_while_p_is_still_0(tmp_path):
    # 4 steps with ada_interval 4: p is 0 for every step (its first update comes after step 4),
    # so the ADA run trains bitwise like the run without and their fid_quick agree exactly
    code = ada_small_data.main(["--steps", "4", "--seeds", "0", "--per-domain", "4", "--every",
                                "4", *(f"--set={o}" for o in common.SMOKE_MODEL),
                                "--set=model.num_domains=2",  # 2 fid_quick tasks, not 6
                                "--out", str(tmp_path / "ada.json")])
    assert code == 0
    off, on = json.loads((tmp_path / "ada.json").read_text())["results"]
    assert (off["ada"], on["ada"]) == (False, True) and off["p"] == [] and off["r_t_last"] is None
    assert on["fid_quick_random_features"] == off["fid_quick_random_features"]
    # the update after step 4: 8 images x 4 steps / (ada_kimg 2 x 1000), up when r_t of those 4
    # steps is above the target 0.6, else down (clamped at 0)
    assert on["p"] == [[4, 0.016 if on["r_t_last"] > 0.6 else 0.0]]


def test_gpu_train_configs_are_the_papers_at_256_px_in_bf16_with_a_usable_fan(tmp_path):
    from stargan_ray.models.fan import FAN, load_fan

    cfg = gpu_train.experiment_config("celeba_hq", smoke=False, wing_dir=tmp_path)
    m, t = cfg.model, cfg.train
    assert (m.img_size, m.w_hpf, cfg.data.batch_size, t.precision) == (256, 1.0, 8, "bf16")
    assert (t.total_iters, t.print_every, t.save_every) == (200, 20, 200)
    assert cfg.data.train_dir == cfg.data.val_dir == "synthetic"
    if Path("expr/checkpoints/wing.ckpt").is_file():
        return  # the real wing file is used where it exists
    assert Path(m.wing_path).parent == tmp_path
    fan = load_fan(m.wing_path, "cpu")  # the worker loads it exactly so
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        expected = FAN().state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in fan.state_dict().items())


@pytest.mark.ray
def test_gpu_train_smoke_runs_ray_train_and_prints_its_figures(ray_session, tmp_path, capsys):
    assert gpu_train.main(["--out", str(tmp_path), "--smoke", "--experiments", "afhq"]) == 0
    stdout = capsys.readouterr().out
    results = json.loads((tmp_path / "train_results.json").read_text())
    (run,) = results["runs"]
    assert run["status"] == "done" and run["steps_done"] == gpu_train.SMOKE_STEPS, run
    windows = run["windows_images_per_s"]
    assert len(windows) == gpu_train.SMOKE_STEPS  # one report per step
    assert run["images_per_s"] == pytest.approx(statistics.median(windows[1:]))  # first dropped
    assert run["images_per_s"] > 0 and run["peak_memory_gib"] is None  # no CUDA peak on CPU
    cfg = common.load_config("afhq", gpu_train.run_overrides(smoke=True), None)
    assert (cfg.model.img_size, cfg.model.w_hpf, cfg.train.precision) == (32, 0.0, "fp32")
    counted = common.step_flops(cfg, torch.device("cpu"), fake=True)
    assert run["flops_per_image"] * cfg.data.batch_size == pytest.approx(counted, rel=1e-12)
    assert run["tflops"] == pytest.approx(run["flops_per_image"] * run["images_per_s"] / 1e12)
    assert run["schedule_hours"] == pytest.approx(
        common.SCHEDULE_ITERS * cfg.data.batch_size / run["images_per_s"] / 3600)
    # the table comes last: title, column names, the row, whose figures parse back
    title, columns, row = stdout.strip().splitlines()[-3:]
    assert title.startswith("Ray Train |") and columns.split()[:2] == ["experiment", "img/s"]
    name, images_per_s, step_ms, peak, gflop, tflops, share, hours = row.split()[:8]
    assert name == "afhq" and peak == "-" and share == "-"  # no GPU, no suite ceiling given
    assert float(images_per_s) == pytest.approx(run["images_per_s"], abs=0.01)
    assert float(step_ms) == pytest.approx(1e3 * cfg.data.batch_size / run["images_per_s"],
                                           abs=0.1)
    assert float(gflop) == pytest.approx(counted / cfg.data.batch_size / 1e9, abs=1e-3)
    assert float(tflops) == pytest.approx(run["tflops"], rel=1e-3)
    assert float(hours) == pytest.approx(run["schedule_hours"], abs=0.01)


@pytest.mark.ray
def test_soak_smoke_samples_every_process_of_the_run_against_the_step(ray_session, tmp_path):
    """benchmarks/soak.py --smoke on the session's Ray: the two Train workers, Ray's own
    processes and this driver are sampled, samples map onto the run's steps in order, every
    evaluation cycle has its phase point, and the reports agree with the samples."""
    result = soak.main(["--smoke", "--storage", str(tmp_path / "run"), "--json",
                        str(tmp_path / "soak.json"), "--markdown", str(tmp_path / "soak.md")])
    lines = (tmp_path / "run" / "samples.jsonl").read_text().splitlines()
    raw = [json.loads(line) for line in lines]
    assert len(raw) == result["samples"] >= 3
    workers = {p["pid"] for s in raw for p in s["procs"] if p["role"] == "train_worker"}
    assert len(workers) == 2  # one Train worker group, no restart
    roles = {p["role"] for s in raw for p in s["procs"]}
    assert {"driver", "controller", "ray_system"} <= roles
    assert all(0 < p["uss"] <= p["rss"] for s in raw for p in s["procs"])
    steps = [c["step"] for c in result["curve"] if c["step"] is not None]
    assert steps == sorted(steps) and 0 <= steps[0] and steps[-1] <= 12
    assert [c["cycle"] for c in result["cycles"]] == [0, 1, 2]  # 12 steps, fid_quick every 4
    for c in result["cycles"]:
        parts = sum(v for k, v in c.items() if k.endswith("_rss") and not k.startswith("total"))
        assert c["total_rss"] == pytest.approx(parts)
        assert c["session"] > 0  # Ray's logs of this session
    summary = result["summary"]
    assert summary["first_eval_keeps_mb"]["total_rss"] == pytest.approx(
        result["cycles"][1]["total_rss"] - result["cycles"][0]["total_rss"])
    assert set(summary["growth_mb_per_1000_steps"]) >= {"total_rss", "train_worker_rss", "shm"}
    assert json.loads((tmp_path / "soak.json").read_text())["cycles"] == result["cycles"]
    assert "| total_rss |" in (tmp_path / "soak.md").read_text()


@pytest.mark.ray
def test_checkpoint_upload_benchmark_times_both_modes_through_the_loops_save(ray_session,
                                                                             tmp_path):
    out = tmp_path / "upload.json"
    assert checkpoint_upload.main(["--smoke", "--repeats", "1", "--storage",
                                   str(tmp_path / "runs"), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    saves = result["saves"]
    assert [s["mode"] for s in saves] == ["sync", "async"]
    # a sync save returns with the copy in storage; an async one may return before it
    assert all(s["loop_s"] > 0 and s["stored_s"] >= s["loop_s"] for s in saves)
    assert result["ratio_async_over_sync"] == pytest.approx(
        result["loop_s"]["async"] / result["loop_s"]["sync"])
    state = checkpoint_upload.build_state("celeba_hq", checkpoint_upload.SMOKE)
    buffer = io.BytesIO()
    torch.save(state_dict(state), buffer)  # the benchmark's file is this state, whole
    assert result["checkpoint_bytes"] == pytest.approx(len(buffer.getvalue()), rel=0.01)
    assert not list((tmp_path / "runs").glob("upload-*"))  # its run folder is removed
