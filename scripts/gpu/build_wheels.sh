#!/usr/bin/env bash
# Wheels (Python 3.12, x86-64 Linux) of what the GPU machine's own Python lacks for scripts/gpu/check.sh: the pinned
# Composer, llm-foundry, Streaming and transformers, and every module they import during the check, each at its
# version in scripts/constraints.txt. They go to .whl/ (ignored by git), which the device call carries; check.sh
# installs them there with --no-deps over the machine's torch.
#   scripts/gpu/build_wheels.sh [--overwrite]
set -euo pipefail
cd "$(dirname "$0")/../.."
PACKAGES=(
    # the pinned stack (transformers, tokenizers, huggingface-hub, accelerate, fsspec, torchmetrics and setuptools
    # replace the machine's newer releases, which the pinned stack does not accept)
    mosaicml llm-foundry mosaicml-streaming transformers tokenizers huggingface-hub accelerate fsspec torchmetrics
    setuptools omegaconf
    # imported by them during the check, missing on the machine (mlflow-skinny holds the mlflow modules llm-foundry
    # imports, without the 29 MB web UI of mlflow; boto3 is optional where accelerate imports it)
    annotated-types backoff bcrypt beautifulsoup4 brotli cachetools catalogue cffi chardet coolname cramjam
    cryptography databricks-sdk datasets defusedxml dill gitdb gitpython google-api-core google-auth google-cloud-core
    google-cloud-storage google-resumable-media googleapis-common-protos gql graphql-core importlib-metadata
    mlflow-skinny more-itertools mosaicml-cli multiprocess opentelemetry-api opentelemetry-sdk
    opentelemetry-semantic-conventions paramiko platformdirs prompt-toolkit pydantic pydantic-core pynacl pynvml
    pyopenssl python-snappy pytz questionary ruamel-yaml smmap soupsieve sqlparse tenacity typing-inspection
    validators wcwidth websockets zstandard zstd
)
if [[ -d .whl && -n $(ls -A .whl) && ${1:-} != --overwrite ]]; then
    echo "build_wheels: .whl/ already holds wheels; pass --overwrite to replace them" >&2
    exit 2
fi
rm -rf .whl
pins=()
for name in "${PACKAGES[@]}"; do
    pin=$(grep -i "^${name}==" scripts/constraints.txt) || { echo "build_wheels: $name is not pinned in scripts/constraints.txt" >&2; exit 2; }
    pins+=("$pin")
done
platforms=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64)
for glibc_minor in $(seq 5 35); do
    platforms+=(--platform "manylinux_2_${glibc_minor}_x86_64")
done
PIP=${PIP:-.venv/bin/python -m pip}
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl "${pins[@]}"
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1) in .whl/"
