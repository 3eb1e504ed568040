"""Builds the Cython/OpenMP kernels in ext/ (flags live here, once, not file by file).

Rebuild in place (the workflow's build rule): python setup.py build_ext --inplace
"""

import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# -march=native: the kernels use the SIMD width of the CPU that builds them
# (docs/design-notes.md#vector-width); -ffp-contract=fast: a * b + c may become one FMA;
# -fno-wrapv undoes the -fwrapv of Python's own CFLAGS (CPython relies on signed wrap-around, the
# kernels do not), which made every int-indexed loop sign-extend its index: int8 decode x1.05,
# prefill x1.20 on an Intel Xeon, the same bits (docs/design-notes.md#no-wrapv).
COMPILE_ARGS = ["-O3", "-march=native", "-fopenmp", "-ffp-contract=fast", "-fno-wrapv"]
LINK_ARGS = ["-fopenmp"]
DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False,
              "cdivision": True, "initializedcheck": False}
KERNELS = ["attention", "decode", "dnnl", "linear", "mlp", "ops"]


def check_toolchain() -> None:
    """Fail with one clear line when there is no C compiler or no OpenMP."""
    cc = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
    cc = cc.split()[0]
    if shutil.which(cc) is None:
        sys.exit(f"error: no C compiler found ({cc!r} is not on PATH); install gcc to build ext/")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "omp.c")
        with open(src, "w") as f:
            f.write("#include <omp.h>\nint main(void){return omp_get_max_threads() > 0 ? 0 : 1;}\n")
        proc = subprocess.run([cc, "-fopenmp", src, "-o", os.path.join(tmp, "omp")],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"error: {cc} cannot build OpenMP code (-fopenmp failed): {proc.stderr.strip()[:300]}")


if any(cmd in sys.argv for cmd in ("build_ext", "build", "bdist_wheel", "develop", "editable_wheel",
                                    "install")) or "egg_info" not in sys.argv:
    check_toolchain()

extensions = [
    Extension(f"ext.{name}", [f"ext/{name}.pyx"], include_dirs=[np.get_include()],
              extra_compile_args=COMPILE_ARGS, extra_link_args=LINK_ARGS,
              define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")])
    for name in KERNELS if os.path.exists(f"ext/{name}.pyx")
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, quiet=True))
