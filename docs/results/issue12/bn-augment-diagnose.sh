#!/usr/bin/env bash
# The experiment behind docs/results.md "Why --augment killed the BN model" (issue 12):
# dsconv_cbam_bn, JAX on the CPU, 40 Adam steps of 64 pictures each, four conditions.
set -u
for aug in light none; do
  for loss in probabilities logits; do
    echo "=== augment $aug, loss $loss"
    KERAS_BACKEND=jax python -m trainer diagnose --arch dsconv_cbam_bn \
      --data ../shared/data/brain-tumor-mri --limit 1024 --batch-size 64 --steps 40 \
      --augment $aug --loss $loss --out docs/results/issue12/jax-$aug-$loss.json 2>&1 | grep -v "^I0000\|WARNING: All"
  done
done
