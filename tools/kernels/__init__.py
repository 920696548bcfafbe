"""ctypes bindings of the dsattn CUDA kernels library (libdsattn_kernels.so).

Tests and benchmarks call the framework-free kernels with PyTorch CUDA tensors' pointers:
`_lib` loading lives here; each op's binding lives in the module named after it (qkv_gemm, softmax_context, int8_matmul).
"""
