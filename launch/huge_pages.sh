# Sourced by the launch scripts: glibc's huge-page tunable for the processes they start.
#
# XLA:CPU allocates a compiled step's temporary buffer (GiBs for a ResNet-50 train step) on
# every step, and glibc maps it fresh each time; with glibc.malloc.hugetlb=1 it faults in 2 MiB
# at a time instead of 4 KiB (hundreds of thousands fewer page faults per step, faster steps on
# CPU hosts; docs/SCALING.md). Tunables are read when a process starts, so they are set here,
# appended to any GLIBC_TUNABLES already exported. A GLIBC_TUNABLES that names
# glibc.malloc.hugetlb already (e.g. glibc.malloc.hugetlb=0, to measure without) is left alone.
# glibc < 2.35 ignores the tunable.
if [[ ":${GLIBC_TUNABLES:-}" != *":glibc.malloc.hugetlb="* ]]; then
  export GLIBC_TUNABLES="${GLIBC_TUNABLES:+$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1"
fi
