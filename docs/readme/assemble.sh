#!/usr/bin/env bash
# README.md is these parts, concatenated in this order. Edit a part, then run this script.
set -euo pipefail
cd "$(dirname "$0")/../.."
parts=(00-intro 05-model trainer evaluation converters agent deploy performance)
for p in "${parts[@]}"; do cat "docs/readme/$p.md"; echo; done > README.md
