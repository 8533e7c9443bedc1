"""Build the compiled ioctl layer; everything else is declared in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

extensions = [
    Extension(
        "btrfsx._ioctl",
        ["btrfsx/_ioctl.pyx"],
        include_dirs=["btrfsx"],
        extra_compile_args=["-O2"],
    ),
    Extension(
        "btrfsx.archive._tar",
        ["btrfsx/archive/_tar.pyx"],
        extra_compile_args=["-O2"],
    ),
]

setup(
    ext_modules=cythonize(
        extensions,
        language_level=3,
        compiler_directives={
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "embedsignature": True,
        },
    )
)
