"""Build cache, dispatch rules ('auto' / explicit impl / scoped default), and a real nvcc build (slow)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from histlib import ops
from histlib.ops import _bias_act as bias_act_mod
from histlib.ops import _build, _dispatch
from histlib.ops import _upfirdn2d as upfirdn2d_mod


@pytest.fixture(autouse=True)
def _clean_state():
    ops.reset_backend_info()
    yield
    ops.set_default_impl("auto")
    ops.reset_backend_info()


def test_importing_compiles_nothing():
    code = ("import sys, histlib; assert 'torch' not in sys.modules; "
            "import histlib.ops as o; from histlib.ops import _build; "
            "assert not _build._modules and not _build._failures; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


def test_cache_dir_honours_env(monkeypatch, tmp_path):
    monkeypatch.setenv("HISTLIB_CACHE", str(tmp_path))
    assert _build.cache_dir() == tmp_path / "ops"
    monkeypatch.delenv("HISTLIB_CACHE")
    assert _build.cache_dir() == Path.home() / ".cache" / "histlib" / "ops"


def test_build_key_depends_on_sources_and_arch(tmp_path):
    a = tmp_path / "k.cu"
    a.write_text("__global__ void k() {}\n")
    k1 = _build.build_key("k", [a], ["8.0"])
    assert k1 == _build.build_key("k", [a], ["8.0"])
    assert k1 != _build.build_key("k", [a], ["9.0"])
    a.write_text("__global__ void k() { }\n")
    assert k1 != _build.build_key("k", [a], ["8.0"])


def test_arch_flags():
    assert _build.arch_flags(["8.0", "9.0+PTX"]) == [
        "-gencode=arch=compute_80,code=sm_80",
        "-gencode=arch=compute_90,code=sm_90",
        "-gencode=arch=compute_90,code=compute_90",
    ]
    with pytest.raises(_build.BuildError, match="architecture"):
        _build.arch_flags(["hopper"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU rule")
def test_arch_list_without_gpu(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    assert _build.cuda_arch_list() == ["8.0", "9.0"]
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST")
    with pytest.raises(_build.BuildError, match="TORCH_CUDA_ARCH_LIST"):
        _build.cuda_arch_list()


def test_failed_build_is_remembered_and_carries_the_message(monkeypatch):
    calls = []

    def broken(name, sources, verbose):
        calls.append(name)
        raise RuntimeError("Error building extension: kernel.cu(12): error: identifier 'foo' is undefined")

    monkeypatch.setattr(_build, "_build_and_load", broken)
    monkeypatch.setattr(_build, "_failures", {})
    monkeypatch.setattr(_build, "_modules", {})
    for _ in range(2):
        with pytest.raises(_build.BuildError, match="identifier 'foo' is undefined"):
            _build.load_extension("fake_op", ["bias_act.cu"])
    assert calls == ["fake_op"]


def test_missing_toolkit_is_a_clear_error(monkeypatch):
    from torch.utils import cpp_extension

    monkeypatch.setattr(cpp_extension, "CUDA_HOME", None)
    with pytest.raises(_build.BuildError, match="CUDA_HOME"):
        _build._build_and_load("bias_act", [_build.SRC_DIR / "bias_act.cu"], False)


# ----------------------------------------------------------------------------------------------------------------
# dispatch


def _probes(fail: dict[str, str]):
    calls = []

    def make(path):
        def probe(validate):
            calls.append((path, validate))
            if path in fail:
                raise RuntimeError(fail[path])
        return probe

    return {"cuda": make("cuda"), "compiled": make("compiled")}, calls


def test_explicit_request_raises_with_the_build_message():
    probes, _ = _probes({"cuda": "nvcc fatal: unsupported gpu architecture 'compute_99'"})
    with pytest.raises(ops.OpUnavailableError, match="compute_99"):
        _dispatch.resolve("bias_act", "cuda", "cuda", "cuda:0", probes)
    with pytest.raises(ops.OpUnavailableError, match="needs a CUDA tensor"):
        _dispatch.resolve("bias_act", "cuda", "cpu", "cpu", probes)


def test_auto_falls_back_and_warns_once(monkeypatch):
    monkeypatch.setitem(_dispatch.AUTO_PREFERENCE, "bias_act", ("cuda", "ref"))
    probes, calls = _probes({"cuda": "ld: cannot find -lcudart"})
    with pytest.warns(RuntimeWarning, match="cannot find -lcudart"):
        assert _dispatch.resolve("bias_act", "auto", "cuda", "cuda:0", probes) == "ref"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("bias_act", "auto", "cuda", "cuda:0", probes) == "ref"
    assert calls == [("cuda", True)]  # probed (with validation) once per device, then cached


def test_auto_takes_the_first_working_candidate(monkeypatch):
    monkeypatch.setitem(_dispatch.AUTO_PREFERENCE, "upfirdn2d", ("compiled", "cuda", "ref"))
    probes, _ = _probes({"compiled": "inductor: no C++ compiler"})
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert _dispatch.resolve("upfirdn2d", "auto", "cuda", "cuda:0", probes) == "cuda"


def test_auto_on_cpu_never_probes():
    probes, calls = _probes({})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _dispatch.resolve("bias_act", "auto", "cpu", "cpu", probes) == "ref"
    assert calls == []


def test_scoped_and_default_impl():
    probes, _ = _probes({})
    assert ops.get_default_impl() == "auto"
    with ops.use_impl("ref"):
        assert _dispatch.resolve("bias_act", "auto", "cuda", "cuda:0", probes) == "ref"
        with ops.use_impl("compiled"):
            assert _dispatch.resolve("bias_act", "auto", "cuda", "cuda:0", probes) == "compiled"
        assert ops.get_default_impl() == "ref"
        # an explicit argument beats the scoped default
        assert _dispatch.resolve("bias_act", "cuda", "cuda", "cuda:0", probes) == "cuda"
    assert ops.get_default_impl() == "auto"
    ops.set_default_impl("ref")
    assert ops.get_default_impl() == "ref"
    with pytest.raises(ValueError, match="impl must be one of"):
        ops.set_default_impl("triton")
    with pytest.raises(ValueError), ops.use_impl("nope"):
        pass


def test_use_impl_restores_after_an_exception():
    with pytest.raises(KeyError), ops.use_impl("ref"):
        raise KeyError("boom")
    assert ops.get_default_impl() == "auto"


def test_backend_info_records_paths():
    x = torch.randn(1, 2, 4, 4)
    assert ops.backend_info() == {}
    ops.bias_act(x, act="relu")
    ops.upsample2d(x, ops.setup_filter([1, 3, 3, 1]))
    assert ops.backend_info() == {"bias_act": "ref", "upfirdn2d": "ref"}
    _dispatch.record("bias_act", "cuda")
    assert ops.backend_info()["bias_act"] == "ref+cuda"


def test_environment_info_hook():
    # histlib.runs.environment_info() calls sys.modules["histlib.ops"].backend_info() for env.json
    ops.bias_act(torch.randn(2, 3), act="lrelu")
    assert sys.modules["histlib.ops"].backend_info() == {"bias_act": "ref"}


# ----------------------------------------------------------------------------------------------------------------
# real build (slow): the CUDA sources compile with nvcc here; running them needs a GPU


def _nvcc_home() -> str | None:
    home = os.environ.get("CUDA_HOME") or ("/usr/local/cuda" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
    if home and Path(home, "bin", "nvcc").exists():
        return home
    return None


@pytest.mark.slow
@pytest.mark.skipif(_nvcc_home() is None, reason="no nvcc (CUDA toolkit) on this machine")
def test_extensions_compile_with_nvcc():
    """Build both extensions in a subprocess (env for the arch list) and show that the Python side calls them right.

    Without a GPU, loading may succeed (then the binding must reject a CPU tensor with its own check, proving the
    argument lists of Python and C++ agree) or fail for want of the NVIDIA driver; a compile error fails the test.
    """
    code = r"""
import torch
from histlib.ops import _build, bias_act as ba, upfirdn2d as ud
ok = []
for name, call in [
    ("bias_act", lambda: ba._kernel("cuda", torch.ones(2, 3), torch.ones(3), None, 0, 1, "lrelu", 0.2, 1.4, -1.0)),
    ("upfirdn2d", lambda: ud._kernel("cuda", torch.ones(1, 1, 4, 4), torch.ones(2, 2), (2, 2), (1, 1), (1, 1, 1, 1),
                                     False, 1.0)),
]:
    try:
        _build.load_extension(name, [name + ".cpp", name + ".cu"])
    except _build.BuildError as exc:
        msg = str(exc)
        assert "driver" in msg.lower() or "libcuda" in msg.lower(), msg  # only a missing driver is acceptable
        print(name, "built; loading needs the driver:", msg.splitlines()[-1][:200])
        continue
    try:
        call()
    except RuntimeError as exc:
        assert name + ": x must be a CUDA tensor" in str(exc), exc
    else:
        raise AssertionError("the kernel ran on a CPU tensor")
    try:
        torch.zeros(1, device="cuda")
    except (RuntimeError, AssertionError) as exc:
        assert "driver" in str(exc).lower() or "cuda" in str(exc).lower(), exc
    print(name, "built and loaded")
print("OK")
"""
    env = dict(os.environ, CUDA_HOME=_nvcc_home(), TORCH_CUDA_ARCH_LIST="8.0;9.0", CUDA_VISIBLE_DEVICES="")
    env.setdefault("MAX_JOBS", "2")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1200, cwd=root,
                         env=env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-8000:]
    assert out.stdout.strip().endswith("OK"), out.stdout


@pytest.mark.slow
def test_compiled_path_on_cpu_with_second_derivatives():
    """torch.compile of the reference, wrapped in the fused autograd functions (needs a C++ compiler)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler for inductor")
    x = torch.randn(2, 3, 6, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    f = ops.setup_filter([1, 3, 3, 1]).double()
    for fused, ref in [
        (lambda x: bias_act_mod._function("compiled", 1, "swish", 0.0, 1.4, 1.0)(x, b),
         lambda x: bias_act_mod._bias_act_ref(x, b, 1, "swish", 0.0, 1.4, 1.0)),
        (lambda x: upfirdn2d_mod._function("compiled", (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)(x, f),
         lambda x: upfirdn2d_mod._upfirdn2d_ref(x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)),
    ]:
        outs = []
        for fn in (fused, ref):
            y = fn(x)
            gx, = torch.autograd.grad((y * y).sum(), [x], create_graph=True)
            ggx, = torch.autograd.grad((gx * gx).sum(), [x])
            outs.append((y, gx, ggx))
        for got, want in zip(*outs):
            torch.testing.assert_close(got, want)
