#!/usr/bin/env bash
# Instruction counts of the SoftmaxContext hot kernels in the built library (needs cuobjdump).
so="${1:-build/plugins/kernels/libdsattn_kernels.so}"
cuobjdump -sass "$so" > /tmp/attn_sass_all.txt || exit 1
for k in 'decode_kernelI6__halfLi128ELi1E' 'decode_kernelI6__halfLi128ELi8E' 'prefill_kernelI6__halfLi128E' 'append_kernelI6__halfE'; do
  awk -v k="$k" '/Function : /{f=index($0,k)>0} f' /tmp/attn_sass_all.txt > /tmp/attn_sass_k.txt
  c() { grep -cE "$1" /tmp/attn_sass_k.txt; }
  echo "$k: LDG.128 $(c 'LDG[^ ]*128') LDG $(c 'LDG') LDGSTS $(c 'LDGSTS') HMMA $(c 'HMMA') LDSM $(c 'LDSM') LDL/STL $(c 'LDL|STL') MUFU.EX2 $(c 'MUFU.EX2') CALL $(c 'CALL')"
done
