#!/bin/sh
# One name per concept: lists type names (struct, enum, trait, top-level type alias) that
# are defined in more than one file of the workspace's crates (crdt, regions, replication,
# simulations, the server in src/) when at least one of the definitions is `pub` (not
# `pub(crate)`/`pub(super)`) and the
# files are in different crates, or when both are `pub`. Private helper types of the same
# name in separate modules of one crate (a simulator's `Node`, `Sim`) are not reported.
# Test modules, benches and fuzz targets are left out. Prints nothing when all is well.
cd "$(dirname "$0")/.." || exit 1
grep -rnoE '^\s*(pub(\([a-z]+\))?\s+)?(struct|enum|trait)\s+[A-Za-z_][A-Za-z0-9_]*|^pub(\([a-z]+\))?\s+type\s+[A-Za-z_][A-Za-z0-9_]*' \
    crdt/src regions/src replication/src simulations/src src --include='*.rs' \
  | grep -vE '(^|/)tests?(\.rs)?[/:]|_tests\.rs:' \
  | sed -E 's/^(([a-z]+)[^:]*):[0-9]+:\s*(pub(\([a-z]+\))?)?\s*(struct|enum|trait|type)\s+([A-Za-z0-9_]+)$/\6 \1 \2 \3/' \
  | sort -u \
  | awk '{ n[$1]++; f[$1] = f[$1] " " $2; if ($4 == "pub") p[$1]++; c[$1 " " $3] = 1; if (!(($1 " " $3) in seen)) { seen[$1 " " $3] = 1; k[$1]++ } }
         END { for (t in n) if (n[t] > 1 && (p[t] > 1 || (p[t] > 0 && k[t] > 1))) print t ":" f[t] }' \
  | sort
