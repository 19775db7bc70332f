#!/usr/bin/env bash
# Wheels of what the notebooks need and a GPU image with PyTorch often lacks (papermill, nbconvert, ipykernel and
# their own dependencies), for CPython 3.12 on x86-64 Linux, into .whl/ (ignored by git). Packages that such
# images already hold (numpy, pandas, matplotlib, pillow, pyyaml, jinja2, requests, tqdm, ...) are left out, so
# that the installed ones are not shadowed; about 16 MB in all. tools/gpu_speed_vs_reference.sh installs .whl/*.whl
# into a temporary folder when the folder exists.
#   tools/gpu_wheels.sh            # PY_VERSION=3.11 tools/gpu_wheels.sh for another Python
. "$(dirname "$0")/common.sh"
set -e
rm -rf .whl && mkdir .whl
"$PY" -m pip download -q --only-binary=:all: --python-version "${PY_VERSION:-3.12}" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d .whl papermill nbconvert nbformat ipykernel
for n in attrs certifi charset_normalizer click cloudpickle fsspec idna jinja2 markupsafe numpy packaging pillow \
         psutil pygments python_dateutil pyyaml requests six tifffile tqdm typing_extensions urllib3; do
    rm -f .whl/"$n"-*.whl
done
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
