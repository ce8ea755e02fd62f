"""`reviewgpt doctor`: each known conflict, simulated by building a broken `Environment` by hand.

No GPU is needed: the checks are pure functions of the probe's result. One test runs the real
probe on this machine; the CLI tests replace the probe with a broken environment.
"""

from __future__ import annotations

import dataclasses
import json

import pytest

from reviewgpt.env import doctor, gpu_checks, probe
from reviewgpt.env.probe import Environment, Gpu, ImportProbe
from reviewgpt.recipe import load_recipe

GIB = 1024**3
PINS = (
    "transformers==4.38.2", "trl==0.7.11", "peft==0.9.0", "accelerate==0.27.2", "datasets==2.16.0",
    "numpy<2", "pandas<3", "pyarrow<26", "torch>=1.13",
    'bitsandbytes>=0.42; extra == "gpu"', 'deepspeed==0.13.1; extra == "gpu"',
)
H100 = Gpu("NVIDIA H100 80GB HBM3", (9, 0), 80 * GIB, 79 * GIB)

# What the reviewgpt:cu118 image on an H100 should look like: every check OK but one WARN, torch 2.2.1's
# triton 2.2 (the triton_* speed options need 3.0).
HEALTHY = Environment(
    python="3.10.12",
    packages={"reviewgpt": "0.1.0", "transformers": "4.38.2", "trl": "0.7.11", "peft": "0.9.0",
              "accelerate": "0.27.2", "datasets": "2.16.0", "numpy": "1.26.4", "pandas": "2.3.3",
              "pyarrow": "25.0.1", "torch": "2.2.1+cu118", "bitsandbytes": "0.43.1",
              "deepspeed": "0.13.1", "flash-attn": "2.5.6", "triton": "2.2.0"},
    pins=PINS,
    torch_version="2.2.1+cu118",
    torch_cuda="11.8",
    torch_cxx11_abi=False,
    torch_arch_list=("sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"),
    cuda_available=True,
    driver_cuda="12.2",
    driver_version="535.104.05",
    gpus=(H100,),
    bitsandbytes=ImportProbe("0.43.1"),
    flash_attn=ImportProbe("2.5.6"),
    deepspeed=ImportProbe("0.13.1"),
    trl=ImportProbe("0.7.11"),
    env={"HF_HUB_OFFLINE": "1"},
)
CPU_ONLY = dataclasses.replace(
    HEALTHY, torch_version="2.13.0+cpu", torch_cuda=None, torch_arch_list=(), cuda_available=False,
    driver_cuda=None, driver_version=None, gpus=(), bitsandbytes=ImportProbe(), flash_attn=ImportProbe(),
    deepspeed=ImportProbe(),
)


def broken(**changes) -> Environment:
    return dataclasses.replace(HEALTHY, **changes)


def with_packages(**versions) -> Environment:
    return broken(packages={**HEALTHY.packages, **{k.replace("_", "-"): v for k, v in versions.items()}})


def by_name(env: Environment, recipe=None) -> dict:
    return {c.name: c for c in doctor.run_checks(env, recipe)}


def test_healthy_gpu_image_is_all_ok():
    checks = doctor.run_checks(HEALTHY, load_recipe("gemma-7b-it"))
    assert [(c.name, c.status) for c in checks if c.status != "OK"] == []
    assert doctor.exit_code(checks) == 0
    newer = with_packages(torch="2.5.1+cu121", triton="3.1.0")  # a torch that ships triton >= 3.0
    assert all(c.status == "OK" for c in doctor.run_checks(newer, load_recipe("gemma-7b-it")))


def test_cpu_machine_warns_but_does_not_fail():
    checks = by_name(CPU_ONLY)
    assert checks["torch-cuda"].status == "WARN"
    assert checks["gpu"].status == "WARN"
    assert doctor.exit_code(list(checks.values())) == 0


# --- versions installed vs pinned

def test_version_off_the_pin_fails_with_the_pin_and_the_lock():
    check = doctor.check_versions(with_packages(transformers="4.40.0"))
    assert check.status == "FAIL"
    assert "transformers 4.40.0 installed, pinned ==4.38.2" in check.detail
    assert "requirements.lock" in check.fix


def test_missing_required_package_fails():
    check = doctor.check_versions(with_packages(peft=None))
    assert check.status == "FAIL" and "peft is not installed" in check.detail


def test_torch_below_the_floor_fails():
    check = doctor.check_versions(with_packages(torch="1.12.1"))
    assert check.status == "FAIL" and "torch 1.12.1 installed, needs >=1.13" in check.detail


def test_optional_extras_are_not_version_checked_here():
    # deepspeed==0.13.1 sits in the `gpu` extra: its own checks judge it, not the pin check.
    assert doctor.check_versions(with_packages(deepspeed=None)).status == "OK"


# --- torch's CUDA build vs driver and GPU

def test_cpu_torch_on_a_gpu_machine_fails():
    check = gpu_checks.check_torch_cuda(dataclasses.replace(CPU_ONLY, driver_cuda="12.2"))
    assert check.status == "FAIL" and "CPU build" in check.detail and "cu118" in check.fix


def test_torch_that_does_not_import_fails():
    check = gpu_checks.check_torch_cuda(broken(torch_version=None, torch_error="ImportError: libcudnn.so.8"))
    assert check.status == "FAIL" and "libcudnn" in check.detail


def test_driver_older_than_torch_cuda_major_fails():
    check = gpu_checks.check_torch_cuda(broken(driver_cuda="10.2", driver_version="440.33"))
    assert check.status == "FAIL" and "supports CUDA 10.2" in check.detail and "driver" in check.fix


def test_driver_older_minor_is_a_warning():
    # CUDA minor-version compatibility: an 11.4 driver runs torch's cu118 build.
    assert gpu_checks.check_torch_cuda(broken(driver_cuda="11.4")).status == "WARN"


def test_torch_sees_no_gpu_fails():
    check = gpu_checks.check_torch_cuda(broken(cuda_available=False, gpus=(), cuda_error="RuntimeError: no device"))
    assert check.status == "FAIL" and "--gpus all" in check.fix


def test_torch_without_kernels_for_the_gpu_fails():
    # torch 1.13 + CUDA 11.7 carries no sm_90: an H100 needs the cu118 image.
    env = broken(torch_version="1.13.1", torch_cuda="11.7",
                 torch_arch_list=("sm_37", "sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86"))
    check = gpu_checks.check_torch_cuda(env)
    assert check.status == "FAIL" and "sm_90" in check.detail and "cu118" in check.fix
    a100 = dataclasses.replace(env, gpus=(Gpu("NVIDIA A100-SXM4-80GB", (8, 0), 80 * GIB, 79 * GIB),))
    assert gpu_checks.check_torch_cuda(a100).status == "OK"


def test_gpu_without_bf16_fails():
    v100 = Gpu("Tesla V100-SXM2-32GB", (7, 0), 32 * GIB, 31 * GIB)
    check = gpu_checks.check_gpus(broken(gpus=(v100,)))
    assert check.status == "FAIL" and "bf16" in check.detail and "NaN" in check.fix


# --- bitsandbytes

def test_bitsandbytes_without_its_cuda_library_names_bnb_cuda_version():
    env = broken(bitsandbytes=ImportProbe("0.43.1", "RuntimeError: CUDA Setup failed despite GPU being available"))
    check = gpu_checks.check_bitsandbytes(env)
    assert check.status == "FAIL"
    assert "BNB_CUDA_VERSION=118" in check.fix and "python -m bitsandbytes" in check.fix


@pytest.mark.parametrize("env", [HEALTHY, CPU_ONLY])
def test_bitsandbytes_that_needs_a_newer_torch_says_so_not_cuda(env):
    """bitsandbytes 0.50.2 on torch 2.2.1: the import fails (peft's, so training's too), GPU or not."""
    error = "AttributeError: module 'torch.library' has no attribute 'register_fake'"
    check = gpu_checks.check_bitsandbytes(dataclasses.replace(env, torch_version="2.2.1",
                                                          bitsandbytes=ImportProbe("0.50.2", error)))
    assert check.status == "FAIL"
    assert check.detail.startswith("bitsandbytes 0.50.2 needs torch >= 2.4, this is torch 2.2.1")
    assert "bitsandbytes==0.43.1" in check.fix and "BNB_CUDA_VERSION" not in check.fix


def test_bitsandbytes_missing_matters_only_with_a_gpu():
    assert gpu_checks.check_bitsandbytes(broken(bitsandbytes=ImportProbe())).status == "FAIL"
    assert gpu_checks.check_bitsandbytes(CPU_ONLY).status == "OK"


# --- flash-attn

def test_flash_attn_abi_mismatch_fails_with_the_wheel_to_take():
    error = "ImportError: flash_attn_2_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi"
    check = gpu_checks.check_flash_attn(broken(flash_attn=ImportProbe("2.5.6", error)))
    assert check.status == "FAIL" and "undefined symbol" in check.detail
    assert "cxx11abiFALSE" in check.fix and "2.2.1+cu118" in check.fix


def test_flash_attn_other_import_error_fails():
    check = gpu_checks.check_flash_attn(broken(flash_attn=ImportProbe("2.5.6", "ModuleNotFoundError: einops")))
    assert check.status == "FAIL" and "einops" in check.detail


def test_flash_attn_missing_on_ampere_is_a_warning():
    assert gpu_checks.check_flash_attn(broken(flash_attn=ImportProbe())).status == "WARN"
    assert gpu_checks.check_flash_attn(CPU_ONLY).status == "OK"


# --- triton (the triton_* speed options)

def test_triton_older_than_3_or_missing_says_the_speed_options_stay_off():
    check = gpu_checks.check_triton(HEALTHY)  # the cu118 image: torch 2.2.1's triton 2.2.0
    assert check.status == "OK"  # a speed option that stays off is not a conflict, as torch-features
    assert check.detail.startswith("triton 2.2.0 is older than 3.0: the triton_* speed options stay off")
    missing = gpu_checks.check_triton(broken(packages={k: v for k, v in HEALTHY.packages.items() if k != "triton"}))
    assert missing.status == "OK" and missing.detail.startswith("triton is not installed")
    assert "stay off" in gpu_checks.check_triton(CPU_ONLY).detail
    ready = gpu_checks.check_triton(with_packages(triton="3.0.0"))
    assert ready.status == "OK" and "run on a CUDA GPU" in ready.detail


# --- deepspeed

@pytest.mark.parametrize("ds, transformers, status", [
    ("0.13.5", "4.38.2", "FAIL"),  # the grad_norm tensor bug (transformers#29207)
    ("0.13.2", "4.38.2", "FAIL"),
    ("0.13.1", "4.38.2", "OK"),
    ("0.13.5", "4.39.0", "OK"),  # 4.39 calls .item()
])
def test_deepspeed_vs_transformers(ds, transformers, status):
    env = dataclasses.replace(with_packages(transformers=transformers), deepspeed=ImportProbe(ds))
    check = doctor.check_deepspeed_transformers(env)
    assert check.status == status
    if status == "FAIL":
        assert "transformers#29207" in check.detail and "deepspeed==0.13.1" in check.fix


def test_deepspeed_0_13_1_on_new_torch_fails_and_warns_about_trl():
    env = broken(torch_version="2.13.0+cpu", deepspeed=ImportProbe("0.13.1"))
    check = doctor.check_deepspeed_torch(env)
    assert check.status == "FAIL"
    assert "cannot import name 'log'" in check.detail and "import trl" in check.detail
    assert "pip uninstall deepspeed" in check.fix


def test_deepspeed_import_error_is_reported_as_seen():
    env = broken(deepspeed=ImportProbe("0.14.2", "ImportError: cannot import name '_get_socket_with_port'"))
    check = doctor.check_deepspeed_torch(env)
    assert check.status == "FAIL" and "_get_socket_with_port" in check.detail


def test_deepspeed_that_imports_on_new_torch_is_ok():
    env = broken(torch_version="2.13.0", deepspeed=ImportProbe("0.14.4"))
    assert doctor.check_deepspeed_torch(env).status == "OK"


# --- numpy / pandas / pyarrow vs datasets 2.16

@pytest.mark.parametrize("package, version, said", [
    ("numpy", "2.0.2", "copy=False"),
    ("pyarrow", "26.0.0", "refuses to import"),
    ("pandas", "3.0.0", "numpy >= 2.0.2"),
])
def test_datasets_stack_conflicts(package, version, said):
    check = doctor.check_datasets_stack(with_packages(**{package: version}))
    assert check.status == "FAIL" and said in check.detail and '"numpy<2"' in check.fix


# --- HF_HUB_OFFLINE

def test_hub_online_warns_about_peft_saves():
    check = doctor.check_hf_offline(broken(env={"HF_HUB_OFFLINE": "0"}))
    assert check.status == "WARN" and "adapter save" in check.detail
    assert doctor.check_hf_offline(broken(env={})).status == "OK"


# --- free GPU memory vs the recipe

def test_memory_estimate_grows_with_context_and_batch():
    gemma = load_recipe("gemma-7b-it")
    base = gpu_checks.estimate_training_bytes(gemma)
    assert gpu_checks.estimate_training_bytes(gemma.replace(max_seq_length=12288)) > base
    assert gpu_checks.estimate_training_bytes(gemma.replace(per_device_train_batch_size=2)) > base
    # The planner's numbers (measured within 10% on the device): ~12 GiB with the speed options,
    # and ~35+ GiB on the seed recipe's path, where Gemma's fp32 logits dominate (REFERENCE.md 2).
    assert 8 * GIB < base < 20 * GIB
    seed_path = gemma.with_speed(chunked_loss=False, bf16_frozen_weights=False, causal_sdpa=False)
    assert gpu_checks.estimate_training_bytes(seed_path) > 30 * GIB
    # a model the planner does not know (a fine-tune's hub id): taken as the family's 7B
    assert gpu_checks.estimate_training_bytes(gemma.replace(model="someone/gemma-7b-reviewer")) == base
    llama = gemma.replace(family="llama", model="someone/llama-reviewer")
    assert 0 < gpu_checks.estimate_training_bytes(llama) != base


def test_recipe_that_does_not_fit_fails_and_tight_fit_warns():
    gemma = load_recipe("gemma-7b-it")
    need = gpu_checks.estimate_training_bytes(gemma)
    small = Gpu("NVIDIA T4", (7, 5), 16 * GIB, 8 * GIB)
    check = gpu_checks.check_gpu_memory(broken(gpus=(small,)), gemma)
    assert check.status == "FAIL" and "--per-device-train-batch-size" in check.fix
    tight = Gpu("GPU", (8, 0), 80 * GIB, int(need / 0.95))
    assert gpu_checks.check_gpu_memory(broken(gpus=(tight,)), gemma).status == "WARN"
    assert gpu_checks.check_gpu_memory(HEALTHY, gemma).status == "OK"


def test_memory_without_recipe_or_gpu_only_reports():
    assert gpu_checks.check_gpu_memory(HEALTHY).status == "OK"
    assert gpu_checks.check_gpu_memory(CPU_ONLY, load_recipe("gemma-7b-it")).status == "OK"
    assert gpu_checks.check_gpu_memory(HEALTHY, load_recipe("tiny")).status == "OK"  # names no base model


# --- report, probe and CLI

def test_report_prints_status_and_fix_lines():
    text = doctor.format_report(CPU_ONLY, doctor.run_checks(CPU_ONLY))
    assert text.splitlines()[0].startswith("reviewgpt doctor: reviewgpt 0.1.0, Python 3.10.12")
    assert any(line.startswith("WARN  torch-cuda") for line in text.splitlines())
    assert "fix: " in text and text.splitlines()[-1] == "11 OK, 2 WARN, 0 FAIL"  # triton: OK without a GPU


def test_real_probe_on_this_machine():
    env = probe.probe_environment()
    assert env.packages["transformers"] == "4.38.2"
    assert env.torch_version is not None
    assert any(p.startswith("transformers==") for p in env.pins)
    json.dumps(env.to_dict())  # the --json output must serialise
    assert {c.name for c in doctor.run_checks(env)} >= {"versions", "torch-cuda", "deepspeed-torch"}


def test_cli_exits_1_on_fail_and_prints_json(monkeypatch, capsys):
    from reviewgpt.cli import main

    monkeypatch.setattr(probe, "probe_environment", lambda: with_packages(numpy="2.0.2"))
    assert main(["doctor", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    statuses = {c["name"]: c["status"] for c in out["checks"]}
    assert statuses["datasets-stack"] == "FAIL" and out["exit_code"] == 1
    assert out["environment"]["torch_version"] == "2.2.1+cu118"


def test_cli_text_report_and_recipe(monkeypatch, capsys):
    from reviewgpt.cli import main

    monkeypatch.setattr(probe, "probe_environment", lambda: HEALTHY)
    assert main(["doctor", "--recipe", "mistral-7b-instruct-v0.2"]) == 0
    out = capsys.readouterr().out
    assert "recipe mistral-7b-instruct-v0.2 needs about" in out and out.rstrip().endswith("0 FAIL")


def test_cli_unknown_recipe_is_one_line_exit_2(monkeypatch, capsys):
    from reviewgpt.cli import main

    monkeypatch.setattr(probe, "probe_environment", lambda: HEALTHY)
    assert main(["doctor", "--recipe", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown recipe 'nope'" in err


def test_cli_help_has_an_example(capsys):
    from reviewgpt.cli import main

    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    assert "example:\n  reviewgpt doctor" in capsys.readouterr().out


# --- what this torch can do (reviewgpt.torch_support), and whether the training stack imports

def test_cu117_torch_warns_what_it_lacks_and_what_runs_instead():
    check = doctor.check_torch_features(broken(torch_version="1.13.1+cu117"))
    assert check.status == "WARN"
    for said in ("DataLoader(prefetch_factor=None)", "reviewgpt passes prefetch_factor=2",
                 "scaled_dot_product_attention", "load as eager", "rms_norm (torch >= 2.4): fused_rmsnorm stays off",
                 "register_fake"):
        assert said in check.detail
    assert doctor.exit_code([check]) == 0  # it trains


def test_cu118_torch_lacks_only_speed_features():
    check = doctor.check_torch_features(HEALTHY)
    assert check.status == "OK" and "fused_rmsnorm stays off" in check.detail and "SDPA" not in check.detail
    assert doctor.check_torch_features(CPU_ONLY).detail == "torch 2.13.0+cpu has every feature reviewgpt uses"


def test_torch_that_does_not_import_fails_the_features_check():
    check = doctor.check_torch_features(broken(torch_version=None, torch_error="ImportError: libcudnn.so.8"))
    assert check.status == "FAIL" and "libcudnn" in check.detail


def test_a_training_stack_that_does_not_import_fails():
    error = "AttributeError: module 'torch.library' has no attribute 'register_fake'"
    checks = by_name(broken(trl=ImportProbe("0.7.11", error)))
    assert checks["training-stack"].status == "FAIL" and error in checks["training-stack"].detail
    assert doctor.exit_code(list(checks.values())) == 1
    assert doctor.check_training_stack(broken(trl=ImportProbe())).status == "FAIL"  # not installed
