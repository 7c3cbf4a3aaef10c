"""`python -m wavalign.info`: version, build flags, CUDA kernels and GPU availability."""

from __future__ import annotations

import platform
import sys


def collect() -> dict:
    import torch

    from wavalign import __version__, ops

    info = ops.build_info()
    torch_gpu = torch.cuda.is_available()
    return {
        "wavalign": __version__,
        "native_version": info.get("version"),
        "build_type": info.get("build_type"),
        "cxx_compiler": info.get("cxx_compiler"),
        "cuda_kernels_compiled": info.get("cuda_kernels"),
        "cuda_architectures": info.get("cuda_architectures", "-"),
        "cuda_devices_seen_by_extension": ops.cuda_device_count(),
        "gpu_usable": bool(info.get("cuda_kernels")) and torch_gpu,
        "cpu_threads": info.get("num_threads"),
        "torch": torch.__version__,
        "torch_cuda_available": torch_gpu,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }


def main() -> int:
    for key, value in collect().items():
        print(f"{key:32s} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
