# libdsattn_ort.so: the three dsattn ops as ONNX Runtime custom ops for the CUDA execution provider
# (included by plugins/CMakeLists.txt when ONNXRUNTIME_INCLUDE_DIR holds onnxruntime_c_api.h; needs
# the C API headers only, no ONNX Runtime library: ONNX Runtime hands its API to RegisterCustomOps).
#
# Like the TensorRT plugins, the kernels' object files are linked in, so the one library that
# SessionOptions.register_custom_ops_library loads is complete apart from the CUDA runtime and
# cuBLASLt. It exports exactly RegisterCustomOps (hidden visibility + ort/dsattn_ort.map).
file(STRINGS "${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_c_api.h" DSATTN_ORT_API_LINE
     REGEX "^#define ORT_API_VERSION [0-9]+")
string(REGEX REPLACE "^#define ORT_API_VERSION ([0-9]+).*" "\\1" DSATTN_ORT_API_VERSION "${DSATTN_ORT_API_LINE}")
if(NOT DSATTN_ORT_API_VERSION OR DSATTN_ORT_API_VERSION LESS 18)
  message(FATAL_ERROR "dsattn: ${ONNXRUNTIME_INCLUDE_DIR}/onnxruntime_c_api.h has ORT_API_VERSION "
                      "'${DSATTN_ORT_API_VERSION}'; libdsattn_ort.so needs the headers of ONNX Runtime 1.18 or later")
endif()
message(STATUS "dsattn: building libdsattn_ort.so against ${ONNXRUNTIME_INCLUDE_DIR} (C API ${DSATTN_ORT_API_VERSION})")

set(DSATTN_ORT_MAP ${CMAKE_CURRENT_SOURCE_DIR}/ort/dsattn_ort.map)
add_library(dsattn_ort SHARED
  ${CMAKE_CURRENT_SOURCE_DIR}/ort/dsattn_ort.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/common/op_attrs.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/common/op_shapes.cpp
  ${CMAKE_CURRENT_SOURCE_DIR}/softmax_context/poison_on_status.cu
  $<TARGET_OBJECTS:dsattn_kernels>)
target_include_directories(dsattn_ort PRIVATE
  ${CMAKE_CURRENT_SOURCE_DIR}/common ${CMAKE_CURRENT_SOURCE_DIR}/kernels)
# SYSTEM: ONNX Runtime's headers are not ours to warn about.
target_include_directories(dsattn_ort SYSTEM PRIVATE ${ONNXRUNTIME_INCLUDE_DIR})
get_target_property(DSATTN_ORT_KERNEL_LINK_LIBS dsattn_kernels LINK_LIBRARIES)
target_link_libraries(dsattn_ort PRIVATE CUDA::cudart ${DSATTN_ORT_KERNEL_LINK_LIBS})
target_compile_options(dsattn_ort PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-O2 -Wall -Wextra -Wno-unused-parameter>
  $<$<COMPILE_LANGUAGE:CUDA>:-O3>)
set_target_properties(dsattn_ort PROPERTIES
  CXX_VISIBILITY_PRESET hidden
  CUDA_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON
  CUDA_RUNTIME_LIBRARY Shared
  LINK_DEPENDS ${DSATTN_ORT_MAP}
  OUTPUT_NAME dsattn_ort)
# --no-undefined: proves the library needs no ONNX Runtime symbol at link time (it must load into
# any process that has ONNX Runtime, which passes its API through RegisterCustomOps).
target_link_options(dsattn_ort PRIVATE "LINKER:--version-script=${DSATTN_ORT_MAP}" "LINKER:--no-undefined")
