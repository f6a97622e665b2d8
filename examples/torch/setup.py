"""Builds the sinkmoe torch package: the operators' C++ (and, with nvcc, CUDA) kernels against
the installed torch, from the header-only library two folders up.

    pip install --no-build-isolation ./examples/torch

--no-build-isolation: the extension compiles against the torch already installed (an isolated
build would download another). Environment:
    SINKMOE_TORCH_CUDA=0|1   build the CUDA operators (default: when nvcc is found and torch has
                             CUDA); TORCH_CUDA_ARCH_LIST as torch reads it (default here: 9.0a)
    SINKMOE_TORCH_CUDA_MECHANISMS=paper|all|ci   which mechanisms nvcc compiles (a kernel each
                             per mask, dtype and head dim): paper (default) every sink and gate
                             with the deduced route and the scaled score; all adds the other
                             routes and the soft-cap; ci a compile check (vanilla, learned sink,
                             elementwise gate)
    MAX_JOBS                 parallel compile jobs (torch's ninja build)
"""
import os
import pathlib

from setuptools import setup
from torch.utils import cpp_extension

HERE = pathlib.Path(__file__).resolve().parent
INCLUDE = HERE.parent.parent / "include"
if not (INCLUDE / "sinkmoe" / "sinkmoe.hpp").exists():
    raise RuntimeError(f"sinkmoe headers not found at {INCLUDE}: build from a sinkmoe checkout")

native = ["-march=native"] if os.environ.get("SINKMOE_TORCH_NATIVE", "1") == "1" else []
cxx_flags = ["-O3", "-g0", "-std=c++20", "-fopenmp", *native]
sources = [f"csrc/{name}" for name in
           ("ops.cpp", "cpu_none.cpp", "cpu_causal.cpp", "cpu_sliding_window.cpp",
            "cpu_streaming.cpp")]

build_cuda = os.environ.get("SINKMOE_TORCH_CUDA")
if build_cuda is None:
    import torch
    build_cuda = "1" if (cpp_extension.CUDA_HOME and torch.version.cuda) else "0"

Extension = cpp_extension.CppExtension
extra = {"cxx": cxx_flags}
libraries = []
if build_cuda == "1":
    Extension = cpp_extension.CUDAExtension
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0a")
    sources += [f"csrc/{name}" for name in ("cuda_ops.cu",)]
    mechanisms = os.environ.get("SINKMOE_TORCH_CUDA_MECHANISMS", "paper")
    defines = {"paper": [], "all": ["-DSINKMOE_TORCH_CUDA_ALL=1"],
               "ci": ["-DSINKMOE_TORCH_CUDA_CI=1"]}[mechanisms]
    extra["nvcc"] = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", *defines]
    libraries = ["cublasLt"]  # the unfused path's GEMMs

setup(
    ext_modules=[Extension(
        "sinkmoe._C", sources, include_dirs=[str(INCLUDE)], extra_compile_args=extra,
        libraries=libraries, extra_link_args=["-fopenmp"])],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
)
