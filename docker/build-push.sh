#!/usr/bin/env bash
# Builds the three images and pushes them to Amazon ECR.
#
#   AWS_ACCOUNT_ID=123456789012 AWS_REGION=ap-northeast-2 VERSION=0.1.0 docker/build-push.sh
#
# Needs Docker with BuildKit (buildx) and the AWS CLI logged in to the account. PLATFORMS defaults to
# linux/amd64; set PLATFORMS=linux/amd64,linux/arm64 for Graviton node groups (the arm64 half then
# builds under QEMU, which is slow: prefer a native arm64 builder). Repositories are created if
# missing, with immutable tags and scan-on-push.
set -euo pipefail
cd "$(dirname "$0")/.."

: "${AWS_ACCOUNT_ID:?set AWS_ACCOUNT_ID}"
AWS_REGION="${AWS_REGION:-ap-northeast-2}"
VERSION="${VERSION:-0.1.0}"
PLATFORMS="${PLATFORMS:-linux/amd64}"
REGISTRY="$AWS_ACCOUNT_ID.dkr.ecr.$AWS_REGION.amazonaws.com"

aws ecr get-login-password --region "$AWS_REGION" | docker login --username AWS --password-stdin "$REGISTRY"

for image in operator queue reservation; do
  repo="tiketi/$image"
  if ! aws ecr describe-repositories --region "$AWS_REGION" --repository-names "$repo" >/dev/null 2>&1; then
    aws ecr create-repository --region "$AWS_REGION" --repository-name "$repo" \
      --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null
  fi
  docker buildx build --platform "$PLATFORMS" --build-arg "VERSION=$VERSION" \
    -f "docker/$image.Dockerfile" -t "$REGISTRY/$repo:$VERSION" --push .
done
echo "pushed $REGISTRY/tiketi/{operator,queue,reservation}:$VERSION"
